"""Does alpha learn? Train VGG16_20M with dense P-pooling from scratch on a generated VOC set for a few hundred CPU
steps, once with the authors' alpha-branch multipliers (conv x1, PReLU x100, bias x180, gradient x3) and once with
every multiplier at 1, and print how far each layer's alpha moved over a fixed probe image.

    python scripts/alpha_moves.py --steps 100                     # VGG16_20M: about 7 minutes on 2 CPU cores
    python scripts/alpha_moves.py --steps 300 --backbone resnet18 --crop 48   # one pool: about 2 minutes

The base learning rate is the authors' VGG encoder rate converted to the mean loss (2e-8 x 321^2 = 2.06e-3).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import lightning as L
import torch

from polypool.callbacks import alpha_summary
from polypool.data import VOCSegmentationDataModule
from polypool.data.fixtures import make_voc
from polypool.models import SegmentationModel

AUTHORS = {
    "alpha_conv_lr_mult": 1.0,
    "alpha_prelu_lr_mult": 100.0,
    "alpha_bias_lr_mult": 180.0,
    "alpha_grad_scale": 3.0,
}
PLAIN = {"alpha_conv_lr_mult": 1.0, "alpha_prelu_lr_mult": 1.0, "alpha_bias_lr_mult": 1.0, "alpha_grad_scale": 1.0}


def alpha_movement(
    root: Path,
    multipliers: dict,
    steps: int,
    lr: float = 2.06e-3,
    crop: int = 64,
    batch: int = 4,
    seed: int = 0,
    backbone: str = "vgg16",
) -> dict[str, tuple[float, ...]]:
    """``{layer: (mean before, mean after, spread before, spread after, mean |change| of alpha's offset)}`` of dense
    alpha over one probe image; the offset is the side branch's 1x1 conv bias (30 at the start)."""
    L.seed_everything(seed, verbose=False)
    network = {"head": "vgg16_20m"} if backbone.startswith("vgg16") else {"head": "aspp", "output_stride": 32}
    model = SegmentationModel(
        backbone=backbone, pooling="ppool", lr=lr, poly_power=1.0, weight_decay=5e-4 / 321**2, **network, **multipliers
    )
    offsets = {
        name: m.alpha_branch.proj.bias.detach().clone()
        for name, m in model.network.backbone.named_modules()
        if hasattr(m, "alpha_branch")
    }
    data = VOCSegmentationDataModule(
        root, batch_size=batch, num_workers=0, crop_size=crop, train_split="train", scale_range=(1.0, 1.0), hflip=False
    )
    data.setup("fit")
    probe = data.val_dataset[0][0][None]
    before = alpha_summary(model, probe)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, data)
    after = alpha_summary(model, probe)
    moved = {
        name: (model.network.backbone.get_submodule(name).alpha_branch.proj.bias.detach() - start).abs().mean()
        for name, start in offsets.items()
    }
    return {
        name: (before[name]["mean"], after[name]["mean"], before[name]["std"], after[name]["std"], float(moved[name]))
        for name in before
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--data", type=Path, help="a VOC-layout folder (default: a generated one)")
    parser.add_argument("--backbone", default="vgg16", help="vgg16 (VGG16_20M, 5 pools) or e.g. resnet18 (1 pool)")
    parser.add_argument("--crop", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or make_voc(Path(tmp) / "voc", n_train=32, n_val=4, seed=0)
        for label, multipliers in (("authors' multipliers", AUTHORS), ("all x1", PLAIN)):
            moved = alpha_movement(root, multipliers, args.steps, crop=args.crop, backbone=args.backbone)
            print(f"{label}, {args.backbone}, {args.steps} steps:", flush=True)
            for name, (mean0, mean1, std0, std1, offset) in moved.items():
                print(
                    f"  {name:16s} mean alpha {mean0:.5f} -> {mean1:.5f} (moved {mean1 - mean0:+.2e}); "
                    f"spread {std0:.2e} -> {std1:.2e}; offset moved {offset:.2e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
