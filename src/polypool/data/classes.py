"""Class names and palettes of the three datasets, in one place."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# PASCAL VOC 2012 (the order of the label values 0..20, as in torchvision's _VOC_CATEGORIES).
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
# The supplement's column headers for the same 21 classes (Tables 1-2).
VOC_SHORT_NAMES = (
    "bg",
    "plane",
    "bike",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "table",
    "dog",
    "horse",
    "mbike",
    "person",
    "plant",
    "sheep",
    "sofa",
    "train",
    "tv",
)


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The VOC colour map (``bitget`` construction of the devkit), ``(num_colors, 3)`` uint8; 255 is the boundary."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for shift in range(8):
            r |= ((value >> 0) & 1) << (7 - shift)
            g |= ((value >> 1) & 1) << (7 - shift)
            b |= ((value >> 2) & 1) << (7 - shift)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def cityscapes_classes() -> tuple[str, ...]:
    """The 19 evaluation classes, by trainId, from ``cityscapesscripts`` (the official definition)."""
    from cityscapesscripts.helpers.labels import trainId2label

    return tuple(trainId2label[i].name for i in range(19))


def cityscapes_palette() -> np.ndarray:
    from cityscapesscripts.helpers.labels import trainId2label

    palette = np.zeros((256, 3), dtype=np.uint8)
    for train_id in range(19):
        palette[train_id] = trainId2label[train_id].color
    return palette


def cityscapes_label_to_train_id() -> np.ndarray:
    """A 256-entry lookup table labelId -> trainId (255 for every label not evaluated), from cityscapesscripts."""
    from cityscapesscripts.helpers.labels import labels

    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < 19:
            table[label.id] = label.trainId
    return table


# ADE20K SceneParsing: the 150 classes of objectInfo150 (first name of each row), in label order 1..150.
ADE20K_CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)
assert len(ADE20K_CLASSES) == 150


def ade20k_palette() -> np.ndarray:
    """A fixed palette for the 150 classes (ADE20K has no official one)."""
    palette = np.random.default_rng(150).integers(0, 256, size=(256, 3), dtype=np.uint8)
    palette[IGNORE_INDEX] = 0
    return palette
