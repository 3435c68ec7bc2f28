"""SegmentationModel: the networks with every pooling, training on fixtures, the metric, the optimiser groups."""

import lightning as L
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from polypool.data import CityscapesDataModule, VOCSegmentationDataModule
from polypool.data.fixtures import make_cityscapes, make_voc
from polypool.models import SegmentationModel
from polypool.pooling import POOLING_NAMES, PPool2d, pooling_parameters

BACKBONES = {"vgg16": 8, "resnet50": 8, "inception_v3": 32}  # backbone -> output stride
INPUT_SIZES = {"vgg16": [(64, 80), (97, 75)], "resnet50": [(64, 80), (97, 75)],
               "inception_v3": [(96, 112), (129, 101)]}  # inception_v3 needs at least ~75 px
# DPP starts at lambda = 0, where its alpha has exactly zero gradient; start it elsewhere to see the gradient.
POOLING_KWARGS = {"dpp": {"lambda_init": 0.5}, "ppool": {"alpha_mode": "channel"}}


def make_model(backbone, pooling, **kwargs):
    return SegmentationModel(backbone=backbone, pooling=pooling, output_stride=BACKBONES[backbone],
                             pooling_kwargs=POOLING_KWARGS.get(pooling), **kwargs)


def check_forward_sizes(model, backbone):
    for size in INPUT_SIZES[backbone]:
        logits = model(torch.rand(2, 3, *size))
        assert logits.shape == (2, 21, *size)


@pytest.mark.parametrize("backbone,pooling", [("vgg16", "ppool"), ("resnet50", "dpp")])
def test_forward_gives_logits_of_the_input_size(backbone, pooling):
    check_forward_sizes(make_model(backbone, pooling), backbone)


@pytest.mark.slow
@pytest.mark.parametrize("pooling", POOLING_NAMES)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_with_every_pooling(backbone, pooling):
    model = make_model(backbone, pooling)
    expected_sites = {"vgg16": 5, "resnet50": 1, "inception_v3": 13}[backbone]
    assert len(model.swap_report.swapped) == expected_sites
    check_forward_sizes(model, backbone)
    size = INPUT_SIZES[backbone][0]
    model(torch.rand(2, 3, *size)).square().mean().backward()
    for name, param in pooling_parameters(model):
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_vgg16_largefov_structure():
    model = make_model("vgg16", "ppool")
    features, head = model.network.backbone, model.network.head
    pools = [m for m in features if isinstance(m, PPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [((3, 3), (2, 2), (1, 1))] * 3 + [
        ((3, 3), (1, 1), (1, 1))] * 2
    convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation for c in convs[-3:]] == [(2, 2)] * 3 and all(c.dilation == (1, 1) for c in convs[:-3])
    assert (head.fc6.kernel_size, head.fc6.dilation, head.fc6.out_channels) == ((3, 3), (12, 12), 1024)
    assert (head.fc7.kernel_size, head.fc7.out_channels, head.classifier.out_channels) == ((1, 1), 1024, 21)
    assert features(torch.rand(1, 3, 64, 64)).shape[-2:] == (8, 8)  # output stride 8


def test_resnet_has_output_stride_8_and_an_aspp_head():
    model = make_model("resnet50", "ppool")
    assert model.network.backbone(torch.rand(1, 3, 64, 64)).shape[-2:] == (8, 8)
    assert [b.dilation for b in model.network.head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert [s.name for s in model.swap_report.swapped] == ["features.maxpool"]


def test_parameter_groups_and_learning_rates():
    model = make_model("resnet50", "ppool", lr=0.01, head_lr_mult=10.0, pooling_lr_mult=3.0, weight_decay=5e-4)
    groups = {g["name"]: g for g in model.parameter_groups()}
    assert (groups["backbone"]["lr"], groups["head"]["lr"], groups["pooling"]["lr"]) == pytest.approx(
        (0.01, 0.1, 0.03))
    assert (groups["backbone"]["weight_decay"], groups["head"]["weight_decay"],
            groups["pooling"]["weight_decay"]) == (5e-4, 5e-4, 0.0)
    assert [id(p) for p in groups["pooling"]["params"]] == [id(p) for _, p in pooling_parameters(model)]
    every = [id(p) for g in groups.values() for p in g["params"]]
    assert len(every) == len(set(every)) == len(list(model.parameters()))  # each parameter exactly once


@pytest.fixture(scope="module")
def voc_fixture(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), n_train=8, n_val=4, seed=3)


class LossHistory(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def fit_a_few_steps(model, root, steps=10, crop_size=64):
    dm = VOCSegmentationDataModule(root, batch_size=4, num_workers=0, crop_size=crop_size)
    history = LossHistory()
    trainer = L.Trainer(max_steps=steps, overfit_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        callbacks=[history], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, dm)
    return trainer, history.losses


def test_a_few_steps_bring_the_loss_down_and_follow_the_poly_schedule(voc_fixture):
    L.seed_everything(0)
    model = make_model("resnet50", "ppool", lr=0.01)
    trainer, losses = fit_a_few_steps(model, voc_fixture, steps=10)
    assert len(losses) == 10 and np.mean(losses[-3:]) < np.mean(losses[:3])
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    factor = (1 - 10 / 10) ** 0.9
    assert groups["backbone"]["lr"] == pytest.approx(0.01 * factor) and groups["head"]["initial_lr"] == 0.1


@pytest.mark.slow
@pytest.mark.parametrize("pooling", POOLING_NAMES)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_training_steps_on_fixtures_for_every_pooling(voc_fixture, backbone, pooling):
    L.seed_everything(0)
    # Inception from scratch (BN, an ASPP head at output stride 32) diverges at lr 0.01 and drifts at 0.001
    model = make_model(backbone, pooling, lr=1e-4 if backbone == "inception_v3" else 0.01)
    _, losses = fit_a_few_steps(model, voc_fixture, steps=8, crop_size=96 if backbone == "inception_v3" else 64)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_miou_equals_a_hand_computed_confusion_matrix():
    model = SegmentationModel(backbone="resnet18", num_classes=5, output_stride=32)
    rng = torch.Generator().manual_seed(0)
    confusion = np.zeros((5, 5), dtype=np.int64)
    for _ in range(3):
        target = torch.randint(0, 4, (2, 9, 11), generator=rng)  # class 4 never occurs in the target...
        target[:, :2] = 255
        pred = torch.randint(0, 4, (2, 9, 11), generator=rng)  # ...nor in the prediction: its IoU is NaN
        model.val_iou.update(pred, target)
        keep = target != 255
        np.add.at(confusion, (target[keep].numpy(), pred[keep].numpy()), 1)
    iou = model.val_iou.compute()
    tp = np.diag(confusion)
    with np.errstate(invalid="ignore"):
        expected = tp / (confusion.sum(0) + confusion.sum(1) - tp)
    np.testing.assert_allclose(iou.numpy(), expected, rtol=1e-6)
    assert torch.isnan(iou[4]) and not torch.isnan(iou[:4]).any()
    assert torch.nanmean(iou).item() == pytest.approx(np.nanmean(expected))


def test_miou_equals_the_official_cityscapes_evaluation(tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    from cityscapesscripts.helpers.labels import trainId2label

    root = make_cityscapes(tmp_path / "cs", n_train=1, n_val=3, seed=4)
    dm = CityscapesDataModule(root, num_workers=0)
    dataset = dm.make_dataset("val", train=False)
    model = SegmentationModel(backbone="resnet18", num_classes=19, output_stride=32)
    rng = np.random.default_rng(0)
    to_label_id = np.array([trainId2label[t].id for t in range(19)], dtype=np.uint8)
    predictions, ground_truths = [], []
    for index, (_, gt_path) in enumerate(dataset.pairs):
        _, target = dataset.load(index)
        # a noisy prediction: the truth (255 -> road), with a third of the pixels replaced by random classes
        pred = np.where(target.numpy() == 255, 0, target.numpy())
        noise = rng.random(pred.shape) < 0.33
        pred[noise] = rng.integers(0, 19, size=noise.sum())
        model.val_iou.update(torch.from_numpy(pred), target)
        path = tmp_path / f"pred_{index}.png"
        Image.fromarray(to_label_id[pred]).save(path)
        predictions.append(str(path))
        ground_truths.append(str(gt_path))
    args = official.args
    args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, False
    result = official.evaluateImgLists(predictions, ground_truths, args)
    ours = model.val_iou.compute()
    assert torch.nanmean(ours).item() == pytest.approx(result["averageScoreClasses"], abs=1e-6)  # torchmetrics is fp32
    for train_id, iou in enumerate(ours.tolist()):
        theirs = result["classScores"][trainId2label[train_id].name]
        assert (np.isnan(iou) and np.isnan(theirs)) or iou == pytest.approx(theirs, abs=1e-6)


def test_predict_step_returns_class_maps_with_tta():
    model = SegmentationModel(backbone="resnet18", num_classes=4, output_stride=32, tta_flip=True,
                              tta_scales=(0.75, 1.0)).eval()
    images = torch.rand(2, 3, 70, 90)
    with torch.no_grad():
        maps = model.predict_step((images, None), 0)
    assert maps.shape == (2, 70, 90) and maps.dtype == torch.int64 and maps.max() < 4


def test_pretrained_without_network_says_how_to_pass_local_weights(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"could not load pretrained weights for timm model 'resnet18'.*"
                                           r"pretrained_cfg_overlay=dict\(file="):
        SegmentationModel(backbone="resnet18", pretrained=True, output_stride=32)


def test_local_weights_file_is_loaded(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        reference.conv1.weight.normal_()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = SegmentationModel(backbone="resnet18", weights=str(path), output_stride=32)
    loaded = model.network.backbone.features.conv1.weight
    assert torch.equal(loaded, reference.conv1.weight)
    with pytest.raises(FileNotFoundError, match="weights file .* does not exist"):
        SegmentationModel(backbone="resnet18", weights=str(tmp_path / "missing.pth"))


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet5O'"):
        SegmentationModel(backbone="resnet5O")
    with pytest.raises(ValueError, match="unknown pooling 'pool'"):
        SegmentationModel(backbone="resnet18", pooling="pool", output_stride=32)
    with pytest.raises(ValueError, match="VGG16-LargeFOV has output stride 8"):
        SegmentationModel(backbone="vgg16", output_stride=16)
    with pytest.raises(ValueError, match="class_names has 2 names for num_classes=3"):
        SegmentationModel(backbone="resnet18", num_classes=3, class_names=["a", "b"], output_stride=32)


def test_dense_alpha_maps_of_one_image():
    model = SegmentationModel(backbone="resnet18", pooling="ppool", output_stride=32,
                              pooling_kwargs={"alpha_mode": "dense"})
    maps = model.dense_alpha_maps(torch.rand(2, 3, 64, 96))
    assert list(maps) == ["features.maxpool"] and maps["features.maxpool"].shape == (64, 16, 24)
    assert ((maps["features.maxpool"] >= 1) & (maps["features.maxpool"] <= 50)).all()


def test_alpha_history_records_channel_alpha_over_training(voc_fixture, tmp_path):
    from polypool.callbacks import AlphaHistory, load_alpha_history

    model = SegmentationModel(backbone="resnet18", pooling="ppool", output_stride=8, lr=0.01,
                              pooling_kwargs={"alpha_mode": "channel", "alpha_init": 3.0, "alpha_range": (0.0, 10.0)})
    dm = VOCSegmentationDataModule(voc_fixture, batch_size=4, num_workers=0, crop_size=48)
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
                        callbacks=[AlphaHistory(every_n_steps=2, bins=20)], limit_val_batches=0)
    trainer.fit(model, dm)
    history = load_alpha_history(tmp_path / AlphaHistory.filename)
    assert [snapshot["step"] for snapshot in history] == [0, 2, 4]
    first, last = (history[i]["layers"]["features.maxpool"] for i in (0, -1))
    assert first["values"] == [3.0] * 64  # the init, before the first update
    learned = model.network.backbone.get_submodule("features.maxpool").current_alpha().flatten().tolist()
    assert last["values"] == pytest.approx(learned, abs=1e-6) and not last["sampled"]
    assert last["values"] != first["values"]  # it learned
    counts, edges = last["hist"]["counts"], last["hist"]["edges"]
    assert len(counts) == 20 and edges[0] == 0.0 and edges[-1] == 10.0 and sum(counts) == 64
    for value in last["values"]:
        assert counts[min(int(value / 10.0 * 20), 19)] > 0
    with pytest.raises(ValueError, match="every_n_steps"):
        AlphaHistory(every_n_steps=0)


def test_alpha_history_probe_leaves_the_training_untouched():
    from polypool.callbacks import AlphaHistory

    model = SegmentationModel(backbone="resnet18", pooling="ppool", output_stride=32,
                              pooling_kwargs={"alpha_mode": "dense"}).train()
    bn = model.network.backbone.get_submodule("features.bn1")
    before = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    callback = AlphaHistory()
    callback._probe = torch.rand(1, 3, 64, 64)
    layers = callback.snapshot(model)
    assert model.training and bn.training  # back in training mode
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.num_batches_tracked, before[1])
    assert layers["features.maxpool"]["mode"] == "dense" and len(layers["features.maxpool"]["values"]) == 1024
