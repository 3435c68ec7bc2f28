"""Is the generated mini-VOC learnable? Train a small segmentation net on it for a few minutes on the CPU and
print the validation mIoU next to the chance level.

    python scripts/fixture_learnability.py --minutes 3 --backbone resnet18

The network is deliberately minimal (a timm backbone at output stride 8 and a 1x1 classifier, Adam), so that
this checks the data and not the training recipe. mIoU is the benchmark definition: the per-class IoU of a
dataset-level confusion matrix (255 ignored), averaged over the classes present.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import timm
import torch
import torch.nn.functional as F
from torch import nn

from polypool.data import VOCSegmentationDataModule
from polypool.data.fixtures import make_voc


class TinySegmenter(nn.Module):
    def __init__(self, backbone: str, num_classes: int):
        super().__init__()
        self.body = timm.create_model(
            backbone,
            pretrained=False,
            features_only=True,
            out_indices=(-1,),
            **({"output_stride": 8} if backbone.startswith("resnet") else {}),
        )
        self.classifier = nn.Conv2d(self.body.feature_info.channels()[-1], num_classes, 1)

    def forward(self, x):
        return F.interpolate(self.classifier(self.body(x)[-1]), size=x.shape[-2:], mode="bilinear", align_corners=False)


def confusion(pred, target, num_classes):
    keep = target != 255
    return torch.bincount(target[keep] * num_classes + pred[keep], minlength=num_classes**2).view(num_classes, -1)


def miou(matrix):
    iou = matrix.diag() / (matrix.sum(0) + matrix.sum(1) - matrix.diag()).clamp(min=1)
    present = matrix.sum(1) > 0
    return iou[present].mean().item(), iou


def run(minutes: float, backbone: str, n_train: int, n_val: int, seed: int, max_steps: int | None = None) -> dict:
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        make_voc(tmp, n_train, n_val, seed=seed)
        dm = VOCSegmentationDataModule(tmp, batch_size=8, num_workers=0, crop_size=96, scale_range=(0.75, 1.25))
        dm.setup("fit")
        model = TinySegmenter(backbone, dm.num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        start, steps = time.time(), 0

        def done():
            return time.time() - start >= minutes * 60 or (max_steps is not None and steps >= max_steps)

        while not done():
            for images, masks in dm.train_dataloader():
                loss = F.cross_entropy(model(images), masks, ignore_index=255)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
                if done():
                    break
        model.eval()
        matrix = torch.zeros(dm.num_classes, dm.num_classes, dtype=torch.long)
        background_only = torch.zeros_like(matrix)
        with torch.no_grad():
            for images, masks, _ in dm.val_dataloader():
                matrix += confusion(model(images).argmax(1).flatten(), masks.flatten(), dm.num_classes)
                background_only += confusion(torch.zeros_like(masks).flatten(), masks.flatten(), dm.num_classes)
    value, _ = miou(matrix)
    chance, _ = miou(background_only)
    return {
        "miou": value,
        "chance_background_only": chance,
        "steps": steps,
        "last_loss": loss.item(),
        "seconds": time.time() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(args.minutes, args.backbone, args.train, args.val, args.seed)
    print(
        f"{args.backbone}, {result['steps']} steps in {result['seconds']:.0f} s, last loss {result['last_loss']:.3f}: "
        f"val mIoU {100 * result['miou']:.1f}% (predicting background everywhere: "
        f"{100 * result['chance_background_only']:.1f}%)"
    )


if __name__ == "__main__":
    main()
