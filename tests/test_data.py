"""The DataModules on fixtures generated in the official layouts, the joint transforms, and every bad input."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from polypool.data import (
    ADE20KDataModule,
    CityscapesDataModule,
    DatasetError,
    VOCSegmentationDataModule,
)
from polypool.data import voc as voc_module
from polypool.data.fixtures import make_ade20k, make_cityscapes, make_voc
from polypool.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    pad_collate,
    train_transform,
)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), n_train=12, n_val=6, n_sbd=6, seed=1)


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"), n_train=4, n_val=2, seed=2)


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    return make_ade20k(tmp_path_factory.mktemp("ade"), n_train=4, n_val=2, seed=3)


def copy_of(root, tmp_path):
    return shutil.copytree(root, tmp_path / "copy")


def voc(root, **kwargs):
    return VOCSegmentationDataModule(root, batch_size=4, num_workers=0, crop_size=48, **kwargs)


# --- VOC -----------------------------------------------------------------------------------------------------------


def test_voc_batches_have_the_right_shapes_types_and_labels(voc_root):
    dm = voc(voc_root)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.num_classes, dm.ignore_index, len(dm.class_names)) == (21, 255, 21)
    assert len(dm.train_dataset) == 12 and len(dm.val_dataset) == 6
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 48, 48) and images.dtype == torch.float32
    assert masks.shape == (4, 48, 48) and masks.dtype == torch.int64
    values = set(masks.unique().tolist())
    assert values <= set(range(21)) | {255} and len(values - {0, 255}) > 0
    images, masks, sizes = next(iter(dm.val_dataloader()))
    assert images.shape == (1, 3, 96, 128)  # full resolution
    assert sizes.tolist() == [[96, 128]]
    assert 255 in masks.unique()  # VOC's boundary band is kept, as ignore


def test_voc_palette_png_is_read_as_class_indices(voc_root):
    png = voc_root / "VOCdevkit/VOC2012/SegmentationClass/2007_000000.png"
    assert Image.open(png).mode == "P"
    ds = voc(voc_root).make_dataset("train", train=False)
    _, mask = ds.load(0)
    assert set(mask.unique().tolist()) <= set(range(21)) | {255}


def test_trainaug_adds_sbd_and_excludes_voc_val(voc_root):
    dm = voc(voc_root, train_split="trainaug")
    dm.setup("fit")
    train_ids = {p[0].stem for p in dm.train_dataset.pairs}
    val_ids = set(dm.split_ids("val"))
    sbd_train = set((voc_root / "benchmark_RELEASE/dataset/train.txt").read_text().split())
    assert sbd_train & val_ids, "the fixture's SBD train overlaps VOC val, like the real one"
    assert not train_ids & val_ids
    assert (
        train_ids
        == (
            set(dm.split_ids("train"))
            | sbd_train
            | set((voc_root / "benchmark_RELEASE/dataset/val.txt").read_text().split())
        )
        - val_ids
    )
    masks = {p[0].stem: p[1] for p in dm.train_dataset.pairs}
    assert masks["2007_000000"].suffix == ".png"  # VOC's own mask wins
    sbd_only = sorted(train_ids - set(dm.split_ids("train")))
    assert sbd_only and all(masks[i].suffix == ".mat" for i in sbd_only)


def test_sbd_mat_holds_the_same_classes_as_the_voc_mask(voc_root):
    from polypool.data.voc import read_sbd_mat

    sbd = read_sbd_mat(voc_root / "benchmark_RELEASE/dataset/cls/2007_000000.mat")
    png = np.asarray(Image.open(voc_root / "VOCdevkit/VOC2012/SegmentationClass/2007_000000.png"))
    known = png != 255
    assert sbd.shape == png.shape and np.array_equal(sbd[known], png[known])


def test_trainaug_from_segmentation_class_aug_pngs(voc_root, tmp_path):
    root = copy_of(voc_root, tmp_path)
    aug = root / "VOCdevkit/VOC2012/SegmentationClassAug"
    aug.mkdir()
    from polypool.data.voc import read_sbd_mat

    for mat in (root / "benchmark_RELEASE/dataset/cls").glob("*.mat"):
        Image.fromarray(read_sbd_mat(mat)).save(aug / f"{mat.stem}.png")
    shutil.rmtree(root / "benchmark_RELEASE")
    dm = voc(root, train_split="trainaug")
    dm.setup("fit")
    assert not {p[0].stem for p in dm.train_dataset.pairs} & set(dm.split_ids("val"))
    assert any(p[1].parent.name == "SegmentationClassAug" for p in dm.train_dataset.pairs)


# --- Cityscapes and ADE20K -----------------------------------------------------------------------------------------


def test_cityscapes_label_ids_map_to_train_ids_like_cityscapesscripts(cityscapes_root, tmp_path):
    from cityscapesscripts.helpers.labels import id2label

    root = copy_of(cityscapes_root, tmp_path)
    every_id = np.array([list(range(34))], dtype=np.uint8).repeat(3, 0)
    gt = next((root / "gtFine/train").rglob("*_gtFine_labelIds.png"))
    image = root / "leftImg8bit/train" / gt.parent.name / gt.name.replace("_gtFine_labelIds", "_leftImg8bit")
    Image.fromarray(every_id, mode="L").save(gt)
    Image.fromarray(np.zeros((3, 34, 3), dtype=np.uint8)).save(image)
    dm = CityscapesDataModule(root, num_workers=0)
    dataset = dm.make_dataset("train", train=False)
    index = [p[1] for p in dataset.pairs].index(gt)
    _, mask = dataset.load(index)
    expected = [id2label[i].trainId if 0 <= id2label[i].trainId < 19 else 255 for i in range(34)]
    assert mask[0].tolist() == expected
    assert (dm.num_classes, len(dm.class_names), dm.class_names[0]) == (19, 19, "road")


def test_cityscapes_prefers_label_train_ids_when_present(tmp_path):
    root = make_cityscapes(tmp_path / "cs", n_train=2, n_val=1, seed=5, train_ids=True)
    dm = CityscapesDataModule(root, num_workers=0)
    with_train_ids = dm.make_dataset("train", train=False)
    assert all(p[1].name.endswith("_labelTrainIds.png") for p in with_train_ids.pairs)
    from_label_ids = CityscapesDataModule(root, num_workers=0, prefer_train_ids=False).make_dataset("train", False)
    assert all(p[1].name.endswith("_labelIds.png") for p in from_label_ids.pairs)
    for i in range(2):
        assert torch.equal(with_train_ids.load(i)[1], from_label_ids.load(i)[1])


def test_cityscapes_batches(cityscapes_root):
    dm = CityscapesDataModule(cityscapes_root, batch_size=2, num_workers=0, crop_size=(32, 48))
    dm.prepare_data()
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 48) and set(masks.unique().tolist()) <= set(range(19)) | {255}


def test_ade20k_shifts_labels_and_ignores_other(ade_root):
    dm = ADE20KDataModule(ade_root, batch_size=2, num_workers=0, crop_size=32)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.num_classes, len(dm.class_names), dm.class_names[0]) == (150, 150, "wall")
    raw = np.asarray(Image.open(dm.val_dataset.pairs[0][1]))
    _, mask = dm.val_dataset.load(0)
    assert (mask[raw == 0] == 255).all()
    assert torch.equal(mask[raw > 0], torch.from_numpy(raw[raw > 0].astype(np.int64) - 1))
    images, _masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32)


# --- transforms ----------------------------------------------------------------------------------------------------


def striped_sample(height=20, width=30):
    mask = torch.arange(width).repeat(height, 1) % 7
    image = (mask * 30).to(torch.uint8)[None].repeat(3, 1, 1)
    return image, mask


def test_flip_moves_image_and_mask_together():
    image, mask = striped_sample()
    flipped_image, flipped_mask = RandomHorizontalFlip(p=1.0)(image, mask)
    assert torch.equal(flipped_mask, mask.flip(-1)) and torch.equal(flipped_image, image.flip(-1))
    assert torch.equal((flipped_image[0] // 30).long(), flipped_mask)


def test_scale_resamples_masks_with_nearest_only():
    image, mask = striped_sample()
    torch.manual_seed(0)
    for _ in range(5):
        scaled_image, scaled_mask = RandomScale((0.5, 2.0))(image, mask)
        assert scaled_image.shape[-2:] == scaled_mask.shape
        assert set(scaled_mask.unique().tolist()) <= set(mask.unique().tolist())  # no interpolated labels


def test_crop_pads_with_the_mean_and_ignore():
    image, mask = striped_sample(10, 12)
    mean = (0.5, 0.25, 0.0)
    crop_image, crop_mask = RandomCrop((16, 20), mean)(image, mask)
    assert crop_image.shape == (3, 16, 20) and crop_mask.shape == (16, 20)
    assert (crop_mask == 255).sum() == 16 * 20 - 10 * 12
    padded = crop_mask == 255
    assert crop_image[0][padded].eq(round(255 * 0.5)).all() and crop_image[2][padded].eq(0).all()


def positional_sample(height=40, width=50):
    """Channel 0 holds the row, channel 1 the column, channel 2 their sum mod 256; the mask is a function of the
    image, (row + 3 col) mod 21, so any crop, flip or offset between image and mask shows."""
    rows = torch.arange(height)[:, None].expand(height, width)
    cols = torch.arange(width)[None, :].expand(height, width)
    image = torch.stack([rows, cols, (rows + cols) % 256]).to(torch.uint8)
    return image, mask_of(image)


def mask_of(image):
    return (image[0].long() + 3 * image[1].long()) % 21


def test_crop_cuts_image_and_mask_at_the_same_random_offset():
    image, mask = positional_sample(40, 50)
    crop = RandomCrop((16, 20), (0.5, 0.5, 0.5))
    offsets = set()
    for seed in range(24):
        crop_image, crop_mask = crop(image, mask, torch.Generator().manual_seed(seed))
        assert crop_image.shape == (3, 16, 20) and crop_mask.shape == (16, 20)
        top, left = int(crop_image[0, 0, 0]), int(crop_image[1, 0, 0])
        offsets.add((top, left))
        assert 0 <= top <= 40 - 16 and 0 <= left <= 50 - 20
        assert torch.equal(crop_image, image[:, top : top + 16, left : left + 20])  # a contiguous window of the image
        assert torch.equal(crop_mask, mask_of(crop_image))  # and the mask cut at the same place
    tops, lefts = {top for top, _ in offsets}, {left for _, left in offsets}
    assert min(tops) <= 4 and max(tops) >= 20 and min(lefts) <= 6 and max(lefts) >= 24  # over the whole range


def test_crop_of_a_sample_larger_in_one_axis_only_pads_the_other():
    image, mask = positional_sample(10, 50)  # shorter than the crop, wider than it
    crop = RandomCrop((16, 20), (0.5, 0.25, 0.0))
    lefts = set()
    for seed in range(8):
        crop_image, crop_mask = crop(image, mask, torch.Generator().manual_seed(seed))
        left = int(crop_image[1, 0, 0])
        lefts.add(left)
        assert torch.equal(crop_image[:, :10], image[:, :, left : left + 20])
        assert torch.equal(crop_mask[:10], mask_of(crop_image[:, :10]))
        fill = torch.tensor([128, 64, 0], dtype=torch.uint8)[:, None, None]
        assert (crop_mask[10:] == 255).all() and (crop_image[:, 10:] == fill).all()
    assert len(lefts) > 3


def test_train_transform_keeps_the_mask_a_function_of_the_image():
    # scale (nearest for the mask: a mask pixel is the mask of some image pixel), crop and flip together, at
    # scale 1 so the image keeps its exact values: every mask pixel is the function of its image pixel
    image, mask = positional_sample(40, 50)
    transform = Compose([RandomScale((1.0, 1.0)), RandomCrop((24, 24), (0.5,) * 3), RandomHorizontalFlip()])
    flips = set()
    for seed in range(10):
        out_image, out_mask = transform(image, mask, torch.Generator().manual_seed(seed))
        assert torch.equal(out_mask, mask_of(out_image))
        flips.add(bool(out_image[1, 0, 0] > out_image[1, 0, -1]))
    assert flips == {True, False}


def test_transforms_are_deterministic_under_a_seed():
    image, mask = striped_sample(40, 50)
    transform = train_transform((24, 24), (0.5, 2.0), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(7)
    first = transform(image, mask)
    torch.manual_seed(7)
    second = transform(image, mask)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    normalized, _ = Normalize((0.5,) * 3, (0.25,) * 3)(image, mask)
    assert torch.allclose(normalized, (image.float() / 255 - 0.5) / 0.25)


def test_pad_collate_pads_masks_with_ignore():
    a = (torch.zeros(3, 5, 7), torch.zeros(5, 7, dtype=torch.long))
    b = (torch.ones(3, 8, 4), torch.ones(8, 4, dtype=torch.long))
    images, masks, sizes = pad_collate([a, b], size_divisor=8)
    assert images.shape == (2, 3, 8, 8) and masks.shape == (2, 8, 8)
    assert (masks[0, 5:] == 255).all() and (masks[1, :, 4:] == 255).all() and (masks[1, :, :4] == 1).all()
    assert sizes.tolist() == [[5, 7], [8, 4]]  # each image's own size, for the detail metrics


# --- bad input: each a clear error naming the file and the fix -----------------------------------------------------


def test_missing_root_names_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)VOC root not found.*Expected layout:.*JPEGImages"):
        voc(tmp_path / "nowhere").prepare_data()
    with pytest.raises(DatasetError, match=r"ADE20K root not found"):
        ADE20KDataModule(tmp_path / "nowhere").prepare_data()
    with pytest.raises(DatasetError, match=r"Cityscapes root not found"):
        CityscapesDataModule(tmp_path / "nowhere").prepare_data()


def test_missing_sub_folder(voc_root, cityscapes_root, tmp_path):
    root = copy_of(voc_root, tmp_path)
    shutil.rmtree(root / "VOCdevkit/VOC2012/SegmentationClass")
    with pytest.raises(DatasetError, match=r"VOC folder SegmentationClass not found: .*SegmentationClass"):
        voc(root).prepare_data()
    cs = shutil.copytree(cityscapes_root, tmp_path / "cs")
    shutil.rmtree(cs / "gtFine/val")
    with pytest.raises(DatasetError, match=r"gtFine/val not found"):
        CityscapesDataModule(cs).prepare_data()


def test_empty_or_missing_split_file(voc_root, tmp_path):
    root = copy_of(voc_root, tmp_path)
    split = root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    split.write_text("\n")
    with pytest.raises(DatasetError, match=r"val.txt is empty"):
        voc(root).prepare_data()
    split.unlink()
    with pytest.raises(DatasetError, match=r"split file not found: .*val.txt"):
        voc(root).prepare_data()


def test_image_without_mask_and_mask_without_image(voc_root, ade_root, tmp_path):
    root = copy_of(voc_root, tmp_path)
    (root / "VOCdevkit/VOC2012/JPEGImages/2008_000001.jpg").unlink()  # its mask stays: a mask without an image
    with pytest.raises(DatasetError, match=r"2008_000001.jpg \(listed in split 'train'\) does not exist"):
        voc(root).setup("fit")
    root = shutil.copytree(voc_root, tmp_path / "voc2")
    (root / "VOCdevkit/VOC2012/SegmentationClass/2007_000000.png").unlink()
    (root / "benchmark_RELEASE/dataset/cls/2007_000000.mat").unlink()
    with pytest.raises(DatasetError, match=r"no mask for image 2007_000000"):
        voc(root).setup("fit")
    ade = shutil.copytree(ade_root, tmp_path / "ade")
    extra = ade / "ADEChallengeData2016/images/validation/ADE_val_00000099.jpg"
    shutil.copy(next((ade / "ADEChallengeData2016/images/validation").glob("*.jpg")), extra)
    with pytest.raises(DatasetError, match=r"image\(s\) in .*validation without a mask.*ADE_val_00000099"):
        ADE20KDataModule(ade).setup("validate")
    extra.unlink()
    (ade / "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg").unlink()
    with pytest.raises(DatasetError, match=r"mask\(s\) in .*without an image.*ADE_val_00000001"):
        ADE20KDataModule(ade).setup("validate")


def test_image_and_mask_sizes_differ(voc_root, tmp_path):
    root = copy_of(voc_root, tmp_path)
    Image.new("RGB", (50, 40)).save(root / "VOCdevkit/VOC2012/JPEGImages/2007_000000.jpg")
    dataset = voc(root).make_dataset("train", train=False)
    with pytest.raises(DatasetError, match=r"2007_000000.jpg is 50x40 but its mask .*2007_000000.png is 128x96"):
        dataset.load(0)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_image(voc_root, tmp_path, damage):
    root = copy_of(voc_root, tmp_path)
    path = root / "VOCdevkit/VOC2012/JPEGImages/2007_000000.jpg"
    data = path.read_bytes()
    path.write_bytes(b"not a jpeg at all" if damage == "garbage" else data[: len(data) // 2])
    dataset = voc(root).make_dataset("train", train=False)
    with pytest.raises(DatasetError, match=r"cannot read .*2007_000000.jpg .*corrupt or truncated"):
        dataset.load(0)


def test_mask_values_out_of_range(voc_root, tmp_path):
    root = copy_of(voc_root, tmp_path)
    path = root / "VOCdevkit/VOC2012/SegmentationClass/2007_000000.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, :5] = 30
    bad = Image.fromarray(mask, mode="P")
    bad.putpalette(Image.open(path).getpalette())
    bad.save(path)
    with pytest.raises(DatasetError, match=r"2007_000000.png holds label value\(s\) \[30\].*check_labels=False"):
        voc(root).make_dataset("train", train=False).load(0)
    _, loaded = voc(root, check_labels=False).make_dataset("train", train=False).load(0)
    assert loaded[0, 0] == 30


def test_cityscapes_file_with_a_wrong_suffix(cityscapes_root, tmp_path):
    root = shutil.copytree(cityscapes_root, tmp_path / "cs")
    image = next((root / "leftImg8bit/train").rglob("*_leftImg8bit.png"))
    shutil.copy(image, image.with_name(image.name.replace("_leftImg8bit", "_leftImg8bit_copy")))
    with pytest.raises(DatasetError, match=r"_leftImg8bit_copy.png does not end with '_leftImg8bit.png'"):
        CityscapesDataModule(root).make_dataset("train", train=True)
    image.with_name(image.name.replace("_leftImg8bit", "_leftImg8bit_copy")).unlink()
    label = next((root / "gtFine/train").rglob("*_gtFine_labelIds.png"))
    shutil.copy(label, label.with_name(label.name.replace("_labelIds", "_labelid")))
    with pytest.raises(DatasetError, match=r"_gtFine_labelid.png has an unknown suffix"):
        CityscapesDataModule(root).make_dataset("train", train=True)


def test_download_without_network_names_the_folder_and_the_url(tmp_path, monkeypatch):
    monkeypatch.setattr(voc_module, "VOC_URL", "http://127.0.0.1:9/VOCtrainval_11-May-2012.tar")  # refused at once
    with pytest.raises(
        DatasetError,
        match=r"could not download VOC 2012 from http://127.0.0.1:9/.*so that .*"
        r"VOCdevkit/VOC2012 exists",
    ):
        voc(tmp_path / "voc", download=True).prepare_data()
    with pytest.raises(DatasetError, match=r"cityscapes-dataset.com/downloads"):
        CityscapesDataModule(tmp_path / "cs", download=True).prepare_data()


@pytest.mark.parametrize("cls", [VOCSegmentationDataModule, CityscapesDataModule, ADE20KDataModule])
def test_every_datamodule_argument_is_exposed_to_lightning_cli(cls, tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    cfg = parser.parse_args(
        [
            f"--data.root={tmp_path}",
            "--data.crop_size=[64,96]",
            "--data.scale_range=[0.75,1.5]",
            "--data.batch_size=3",
            "--data.check_labels=false",
            "--data.train_split=custom",
        ]
    )
    dm = cls(**cfg.data.as_dict())
    assert (dm.crop_size, dm.scale_range, dm.batch_size, dm.check_labels, dm.train_split) == (
        (64, 96),
        (0.75, 1.5),
        3,
        False,
        "custom",
    )


def test_augmentation_depends_on_seed_epoch_and_index_only(voc_root):
    from polypool.data.dataset import EpochSampler

    dm = voc(voc_root)
    dm.setup("fit")
    dataset = dm.train_dataset
    n = len(dataset)
    first, again = dataset[3], dataset[3]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])  # no global RNG involved
    later = dataset[2 * n + 3]  # the same image in epoch 2: another crop/flip/scale
    assert not torch.equal(first[0], later[0])
    sampler = EpochSampler(dataset, seed=5)
    sampler.set_epoch(2)
    order = list(sampler)
    assert sorted(i - 2 * n for i in order) == list(range(n))
    sampler.set_epoch(2)
    assert list(sampler) == order  # a resumed epoch sees the same order
    unset = EpochSampler(dataset, seed=5)
    assert [i // n for i in list(unset)] == [0] * n and [i // n for i in list(unset)] == [1] * n


# --- the details mutation testing found unchecked (transforms.py) -------------------------------------------------


def test_scale_gives_the_drawn_size_within_the_range():
    image, mask = positional_sample(20, 30)
    sizes = set()
    for seed in range(10):
        scaled_image, scaled_mask = RandomScale((0.5, 1.5))(image, mask, torch.Generator().manual_seed(seed))
        scale = 0.5 + torch.rand((), generator=torch.Generator().manual_seed(seed)).item()
        assert scaled_image.shape == (3, round(20 * scale), round(30 * scale)) and scaled_image.dtype == torch.uint8
        assert scaled_mask.shape == scaled_image.shape[-2:] and scaled_mask.dtype == torch.long
        sizes.add(scaled_image.shape[-2:])
    assert len(sizes) > 5
    tiny_image, tiny_mask = RandomScale((0.2, 0.2))(image[:, :4, :4], mask[:4, :4])
    assert tiny_image.shape == (3, 1, 1) and tiny_mask.shape == (1, 1)  # 0.8 px rounds to 1, never 0 (or 2)
    for bad in [(0.0, 1.0), (1.5, 1.0)]:
        with pytest.raises(ValueError, match=r"scale_range must be \(min, max\) with 0 < min <= max, got"):
            RandomScale(bad)


def test_resize_is_bilinear_without_corner_alignment_and_keeps_black_black():
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    image[:, :, 1] = 200  # a black column and a grey one
    mask = torch.tensor([[1, 2], [3, 4]])
    from polypool.data.transforms import resize

    out_image, out_mask = resize(image, mask, (2, 4))
    # align_corners=False: output columns sample x = 0.25, 0.75, 1.25, 1.75 of the input (clamped to [0, 1])
    assert out_image[0, 0].tolist() == [0, 50, 150, 200] and out_image.dtype == torch.uint8
    assert out_mask.tolist() == [[1, 1, 2, 2], [3, 3, 4, 4]]


def test_flip_uses_the_generator_only():
    image, mask = positional_sample(4, 6)
    flip = RandomHorizontalFlip(p=0.5)
    for seed in range(8):
        torch.manual_seed(100 + seed)  # the global generator must not matter
        out_image, _ = flip(image, mask, torch.Generator().manual_seed(seed))
        flipped = torch.rand((), generator=torch.Generator().manual_seed(seed)).item() < 0.5
        assert torch.equal(out_image, image.flip(-1) if flipped else image)


def test_crop_fill_of_a_white_mean_and_the_dtypes():
    image, mask = positional_sample(4, 6)
    crop_image, crop_mask = RandomCrop((6, 6), (1.0, 0.1, 0.0))(image, mask)
    assert crop_image.dtype == torch.uint8 and crop_mask.dtype == torch.long
    assert crop_image[:, 5, 0].tolist() == [255, 26, 0] and crop_mask[5, 0] == 255


def test_train_transform_flips_unless_told_not_to():
    with_flip = train_transform((8, 8), (1.0, 1.0), (0.5,) * 3, (0.25,) * 3)
    without = train_transform((8, 8), (1.0, 1.0), (0.5,) * 3, (0.25,) * 3, hflip=False)
    assert [type(t).__name__ for t in with_flip.transforms] == [
        "RandomScale",
        "RandomCrop",
        "RandomHorizontalFlip",
        "Normalize",
    ]
    assert [type(t).__name__ for t in without.transforms] == ["RandomScale", "RandomCrop", "Normalize"]


def test_pad_collate_keeps_the_image_dtype_and_values():
    a = (torch.full((3, 2, 3), 0.25, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.long))
    b = (torch.full((3, 3, 2), -1.5, dtype=torch.float64), torch.ones(3, 2, dtype=torch.long))
    images, masks, _ = pad_collate([a, b])  # size_divisor 1 by default: no rounding up
    assert images.shape == (2, 3, 3, 3) and masks.shape == (2, 3, 3)
    assert images.dtype == torch.float64 and masks.dtype == torch.long
    assert images[0, :, :2, :3].eq(0.25).all() and images[1, :, :3, :2].eq(-1.5).all()
    assert images[0, :, 2:].eq(0).all() and (masks[0, 2:] == 255).all() and (masks[1, :, 2:] == 255).all()
