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
INPUT_SIZES = {
    "vgg16": [(64, 80), (97, 75)],
    "resnet50": [(64, 80), (97, 75)],
    "inception_v3": [(96, 112), (129, 101)],
}  # inception_v3 needs at least ~75 px
# DPP starts at lambda = 0, where its alpha has exactly zero gradient; start it elsewhere to see the gradient.
POOLING_KWARGS = {"dpp": {"lambda_init": 0.5}, "ppool": {"alpha_mode": "channel"}}


def make_model(backbone, pooling, **kwargs):
    return SegmentationModel(
        backbone=backbone,
        pooling=pooling,
        output_stride=BACKBONES[backbone],
        pooling_kwargs=POOLING_KWARGS.get(pooling),
        **kwargs,
    )


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
    expected_sites = {"vgg16": 6, "resnet50": 1, "inception_v3": 13}[backbone]  # vgg16: LargeFOV, pool5a too
    assert len([s for s in model.swap_report.sites if s.kind]) == expected_sites
    # "max" is the pretrained network as it is: no site changes; every other pooling replaces every site
    assert len(model.swap_report.swapped) == (0 if pooling == "max" else expected_sites)
    check_forward_sizes(model, backbone)
    size = INPUT_SIZES[backbone][0]
    model(torch.rand(2, 3, *size)).square().mean().backward()
    for name, param in pooling_parameters(model):
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} gets no gradient"


def pool_windows(features):
    return [(p.kernel_size, p.stride, p.padding) for p in features if isinstance(p, (PPool2d, torch.nn.MaxPool2d))]


def test_vgg16_largefov_structure():
    model = make_model("vgg16", "ppool", head="largefov")
    features, head = model.network.backbone, model.network.head
    assert pool_windows(features) == [((3, 3), (2, 2), (1, 1))] * 3 + [((3, 3), (1, 1), (1, 1))] * 3  # + pool5a
    convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation for c in convs[-3:]] == [(2, 2)] * 3 and all(c.dilation == (1, 1) for c in convs[:-3])
    assert (head.fc6.kernel_size, head.fc6.dilation, head.fc6.out_channels) == ((3, 3), (12, 12), 1024)
    assert (head.fc7.kernel_size, head.fc7.out_channels, head.classifier.out_channels) == ((1, 1), 1024, 21)
    # output stride 8 with Caffe's rounding up: 65 -> 33 -> 17 -> 9, and 64 -> 33 -> 17 -> 9
    assert features(torch.rand(1, 3, 65, 64)).shape[-2:] == (9, 9)
    assert isinstance(head.drop, torch.nn.Dropout) and not isinstance(head.drop, torch.nn.Dropout2d)


def test_vgg16_20m_is_the_authors_layout():
    model = SegmentationModel(backbone="vgg16", pooling="max", head="vgg16_20m")
    features, head = model.network.backbone, model.network.head
    assert pool_windows(features) == [(2, 2, 1)] * 3 + [(2, 1, 0), (3, 1, 1)]
    convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation for c in convs[-3:]] == [(2, 2)] * 3 and all(c.dilation == (1, 1) for c in convs[:-3])
    assert (head.fc6.kernel_size, head.fc6.dilation, head.fc6.padding, head.fc6.out_channels) == (
        (3, 3),
        (1, 1),
        (1, 1),
        1024,
    )
    # 321 -> 161 -> 81 -> 41 (2x2/2 pad 1, floor) -> 40 (2x2/1) -> 40 (3x3/1 pad 1)
    assert features(torch.rand(1, 3, 321, 321)).shape[-2:] == (40, 40)
    assert model(torch.rand(1, 3, 65, 49)).shape == (1, 21, 65, 49)
    assert isinstance(head.drop, torch.nn.Dropout2d)  # VGGModels.py drops whole channels (tests/test_fidelity_vgg.py)
    with pytest.raises(ValueError, match="vgg16 takes head 'vgg16_20m'.*or 'largefov'"):
        SegmentationModel(backbone="vgg16", head="aspp")
    with pytest.raises(ValueError, match="'vgg16_20m' is a VGG16 head"):
        SegmentationModel(backbone="resnet18", head="vgg16_20m", output_stride=32)


@pytest.mark.parametrize("head", ["vgg16_20m", "largefov"])
def test_vgg_fc6_fc7_start_from_the_subsampled_imagenet_fc_layers(tmp_path, head):
    reference = timm.create_model("vgg16", pretrained=False)  # random "ImageNet" weights, saved as a local file
    with torch.no_grad():
        for param in reference.pre_logits.parameters():
            param.normal_()
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    model = SegmentationModel(backbone="vgg16", head=head, weights=str(path))
    fc1, fc2, network_head = reference.pre_logits.fc1, reference.pre_logits.fc2, model.network.head
    assert torch.equal(network_head.fc6.weight, fc1.weight[::4, :, ::3, ::3])
    assert torch.equal(network_head.fc6.bias, fc1.bias[::4])
    assert torch.equal(network_head.fc7.weight, fc2.weight[::4, ::4])
    assert torch.equal(network_head.fc7.bias, fc2.bias[::4])
    assert torch.equal(model.network.backbone[0].weight, reference.features[0].weight)
    # fc6/fc7 are ImageNet layers (backbone lr); only the classifier is new (head lr)
    groups = {g["name"]: g for g in model.parameter_groups()}
    head_ids = {id(p) for g in groups.values() if g["name"].startswith("head/") for p in g["params"]}
    assert head_ids == {id(p) for p in network_head.classifier.parameters()}
    # without ImageNet weights they are random (PyTorch's default init), not copies
    scratch = SegmentationModel(backbone="vgg16", head=head).network.head
    assert not torch.equal(scratch.fc6.weight, fc1.weight[::4, :, ::3, ::3])


def test_resnet_has_output_stride_8_and_an_aspp_head():
    model = make_model("resnet50", "ppool")
    # DeepLab v2 (aspp at output stride 8) rounds its pool1 up as Caffe: 65 -> 33 -> 17 -> 9, and 64 -> 32 -> 17 -> 9
    assert model.network.backbone(torch.rand(1, 3, 65, 64)).shape[-2:] == (9, 9)
    assert [b.dilation for b in model.network.head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert [s.name for s in model.swap_report.swapped] == ["features.maxpool"]


def test_resnet50_deeplabv3_head_at_output_stride_16():
    model = SegmentationModel(backbone="resnet18", head="aspp_v3", output_stride=16)
    head = model.network.head
    assert model.network.backbone(torch.rand(1, 3, 64, 64)).shape[-2:] == (4, 4)
    assert [b[0].dilation for b in head.branches] == [(1, 1), (6, 6), (12, 12), (18, 18)]
    assert model(torch.rand(2, 3, 64, 80)).shape == (2, 21, 64, 80)
    at_8 = SegmentationModel(backbone="resnet18", head="aspp_v3", output_stride=8).network.head
    assert [b[0].dilation for b in at_8.branches] == [(1, 1), (12, 12), (24, 24), (36, 36)]


def groups_by_name(model):
    return {g["name"]: g for g in model.parameter_groups()}


def test_parameter_groups_and_learning_rates():
    model = make_model(
        "resnet50", "ppool", lr=0.01, head_lr_mult=10.0, pooling_lr_mult=3.0, weight_decay=5e-4, bias_lr_mult=2.0
    )
    groups = groups_by_name(model)
    assert sorted(groups) == ["backbone/norm", "backbone/weight", "head/bias", "head/weight", "pooling/weight"]
    lr = {name: g["lr"] for name, g in groups.items()}
    assert lr == pytest.approx(
        {"backbone/norm": 0.01, "backbone/weight": 0.01, "head/bias": 0.2, "head/weight": 0.1, "pooling/weight": 0.03}
    )
    decay = {name: g["weight_decay"] for name, g in groups.items()}
    assert decay == {
        "backbone/norm": 0.0,
        "backbone/weight": 5e-4,
        "head/bias": 0.0,
        "head/weight": 5e-4,
        "pooling/weight": 0.0,
    }
    assert [id(p) for p in groups["pooling/weight"]["params"]] == [id(p) for _, p in pooling_parameters(model)]
    norms = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    assert {id(p) for p in groups["backbone/norm"]["params"]} == {id(p) for p in norms}
    every = [id(p) for g in groups.values() for p in g["params"]]
    assert len(every) == len(set(every)) == len(list(model.parameters()))  # each parameter exactly once
    decayed = SegmentationModel(backbone="resnet18", output_stride=32, decay_norm_and_bias=True)
    assert groups_by_name(decayed)["backbone/norm"]["weight_decay"] == 5e-4


def test_the_dense_alpha_branch_multipliers_reach_the_optimiser():
    model = SegmentationModel(
        backbone="resnet18",
        pooling="ppool",
        output_stride=32,
        lr=0.002,
        weight_decay=5e-4,
        alpha_conv_lr_mult=1.0,
        alpha_prelu_lr_mult=100.0,
        alpha_bias_lr_mult=180.0,
        alpha_grad_scale=3.0,
    )
    model.trainer = type("FakeTrainer", (), {"estimated_stepping_batches": 100})()  # what configure_optimizers reads
    optimizer = model.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    branch = model.network.backbone.get_submodule("features.maxpool").alpha_branch
    assert branch.proj.bias.tolist() == [30.0] * 64
    expected = {
        "alpha_conv/weight": ({id(branch.conv.weight), id(branch.proj.weight)}, 0.002, 5e-4),
        "alpha_prelu/weight": ({id(branch.act.weight)}, 0.2, 0.0),
        "alpha_bias/bias": ({id(branch.proj.bias)}, 0.36, 0.0),
    }
    for name, (ids, lr, decay) in expected.items():
        assert {id(p) for p in groups[name]["params"]} == ids, name
        assert (groups[name]["lr"], groups[name]["weight_decay"]) == (pytest.approx(lr), decay), name
    assert model.network.backbone.get_submodule("features.maxpool").alpha_grad_scale == 3.0


def test_alpha_grad_scale_multiplies_the_branch_gradients_and_leaves_the_forward_alone():
    torch.manual_seed(0)
    x = torch.rand(2, 4, 9, 9)
    results = []
    for scale in (1.0, 3.0):
        torch.manual_seed(1)
        pool = PPool2d(3, 2, 1, channels=4, alpha_mode="dense", alpha_grad_scale=scale)
        y = pool(x)
        (y * torch.linspace(0, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), pool.alpha_branch.proj.bias.grad.clone(), pool.alpha_branch.act.weight.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1].abs().sum() > 0
    torch.testing.assert_close(results[1][1], 3 * results[0][1])
    torch.testing.assert_close(results[1][2], 3 * results[0][2])
    with pytest.raises(ValueError, match="alpha_grad_scale must be > 0"):
        PPool2d(2, alpha_grad_scale=0.0)


def test_frozen_batchnorm_keeps_its_statistics_and_parameters():
    model = SegmentationModel(backbone="resnet18", output_stride=32, batchnorm="frozen").train()
    bn = model.network.backbone.get_submodule("features.bn1")
    before = bn.running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert model.training and not bn.training and torch.equal(bn.running_mean, before)
    names = {g["name"] for g in model.parameter_groups()}
    assert "backbone/norm" not in names and not bn.weight.requires_grad
    trained = SegmentationModel(backbone="resnet18", output_stride=32).train()
    trained(torch.rand(2, 3, 64, 64))
    assert not torch.equal(trained.network.backbone.get_submodule("features.bn1").running_mean, before)


def test_max_is_the_pretrained_network_and_max_all_turns_every_site_into_max():
    kept = SegmentationModel(backbone="inception_v3", pooling="max", output_stride=32)
    kinds = [s.kind for s in kept.swap_report.sites if s.kind]
    assert (kinds.count("avg"), kinds.count("max"), kept.swap_report.swapped) == (9, 4, [])
    every = SegmentationModel(backbone="inception_v3", pooling="max_all", output_stride=32)
    assert len(every.swap_report.swapped) == 13
    assert {s.new for s in every.swap_report.swapped} == {"MaxPool2d"}
    # "max" is timm's network as it is: its features equal an untouched timm model's with the same weights
    timm_features = timm.create_model("inception_v3", features_only=True, out_indices=(-1,)).eval()
    timm_features.load_state_dict(kept.network.backbone.features.state_dict())
    images = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(kept.eval().network.backbone(images), timm_features(images)[-1])
        every.network.backbone.load_state_dict(kept.network.backbone.state_dict())
        assert not torch.allclose(every.eval().network.backbone(images), timm_features(images)[-1])


def test_input_normalisation_comes_from_the_backbone_weights():
    assert SegmentationModel(backbone="inception_v3", output_stride=32).input_mean_std == ((0.5,) * 3, (0.5,) * 3)
    assert SegmentationModel(backbone="resnet18", output_stride=32).input_mean_std == (
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )


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
    trainer = L.Trainer(
        max_steps=steps,
        overfit_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[history],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, dm)
    return trainer, history.losses


def test_a_few_steps_bring_the_loss_down_and_follow_the_poly_schedule(voc_fixture):
    L.seed_everything(0)
    model = make_model("resnet50", "ppool", lr=0.01)
    trainer, losses = fit_a_few_steps(model, voc_fixture, steps=10)
    assert len(losses) == 10 and np.mean(losses[-3:]) < np.mean(losses[:3])
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    factor = (1 - 10 / 10) ** 0.9
    assert groups["backbone/weight"]["lr"] == pytest.approx(0.01 * factor)
    assert groups["head/weight"]["initial_lr"] == 0.1


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
    model = SegmentationModel(
        backbone="resnet18", num_classes=4, output_stride=32, tta_flip=True, tta_scales=(0.75, 1.0)
    ).eval()
    images = torch.rand(2, 3, 70, 90)
    with torch.no_grad():
        maps = model.predict_step((images, None), 0)
    assert maps.shape == (2, 70, 90) and maps.dtype == torch.int64 and maps.max() < 4


def test_pretrained_without_network_says_how_to_pass_local_weights(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        RuntimeError,
        match=r"could not load pretrained weights for timm model 'resnet18'.*"
        r"pretrained_cfg_overlay=dict\(file=",
    ):
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
    with pytest.raises(ValueError, match="unknown backbone 'resnet5O'"):
        SegmentationModel(backbone="resnet5O")
    # unknown before anything else: a VGG head on an unknown name says the name is unknown (issue 32, section 7)
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg17'.*close names: \[.*'vgg16'"):
        SegmentationModel(backbone="vgg17", head="vgg16_20m")
    with pytest.raises(ValueError, match="unknown pooling 'pool'"):
        SegmentationModel(backbone="resnet18", pooling="pool", output_stride=32)
    with pytest.raises(ValueError, match="VGG16 segmentation networks have output stride 8"):
        SegmentationModel(backbone="vgg16", output_stride=16)
    with pytest.raises(ValueError, match="class_names has 2 names for num_classes=3"):
        SegmentationModel(backbone="resnet18", num_classes=3, class_names=["a", "b"], output_stride=32)
    for scales in ([], [1.0, 0.0], [-0.5]):
        with pytest.raises(ValueError, match=r"tta_scales must be one or more input scales > 0 .*got \["):
            SegmentationModel(backbone="resnet18", output_stride=32, tta_scales=scales)


def test_dense_alpha_maps_of_one_image():
    model = SegmentationModel(
        backbone="resnet18", pooling="ppool", output_stride=32, pooling_kwargs={"alpha_mode": "dense"}
    )
    maps = model.dense_alpha_maps(torch.rand(2, 3, 64, 96))
    assert list(maps) == ["features.maxpool"] and maps["features.maxpool"].shape == (64, 16, 24)
    assert ((maps["features.maxpool"] >= 1) & (maps["features.maxpool"] <= 50)).all()


def test_alpha_history_records_channel_alpha_over_training(voc_fixture, tmp_path):
    from polypool.callbacks import AlphaHistory, load_alpha_history

    model = SegmentationModel(
        backbone="resnet18",
        pooling="ppool",
        output_stride=8,
        lr=0.01,
        pooling_kwargs={"alpha_mode": "channel", "alpha_init": 3.0, "alpha_range": (0.0, 10.0)},
    )
    dm = VOCSegmentationDataModule(voc_fixture, batch_size=4, num_workers=0, crop_size=48)
    trainer = L.Trainer(
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
        callbacks=[AlphaHistory(every_n_steps=2, bins=20)],
        limit_val_batches=0,
    )
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

    model = SegmentationModel(
        backbone="resnet18", pooling="ppool", output_stride=32, pooling_kwargs={"alpha_mode": "dense"}
    ).train()
    bn = model.network.backbone.get_submodule("features.bn1")
    before = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    callback = AlphaHistory()
    callback._probe = torch.rand(1, 3, 64, 64)
    layers = callback.snapshot(model)
    assert model.training and bn.training  # back in training mode
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.num_batches_tracked, before[1])
    assert layers["features.maxpool"]["mode"] == "dense" and len(layers["features.maxpool"]["values"]) == 1024


# -- evaluation protocol, logging, optimiser options, trained weights ------------------------------------------------
def test_sliding_window_evaluation_is_a_model_option():
    from polypool.inference import sliding_window_logits

    model = SegmentationModel(
        backbone="resnet18",
        num_classes=5,
        output_stride=32,
        eval_mode="sliding",
        eval_crop=(64, 64),
        eval_stride=(40, 40),
    ).eval()
    images = torch.rand(1, 3, 90, 130)
    with torch.no_grad():
        sliding = sliding_window_logits(model, images, 5, (64, 64), (40, 40))
        assert torch.equal(model.view_logits(images), sliding)
        assert torch.equal(model.evaluation_prediction(images), sliding.argmax(1))
        assert not torch.allclose(sliding, model(images))  # not the whole-image logits
        other_stride = sliding_window_logits(model, images, 5, (64, 64), (64, 64))
        assert not torch.allclose(sliding, other_stride)  # the stride matters, so the check above sees it
    with pytest.raises(ValueError, match="eval_mode='sliding' needs eval_crop"):
        SegmentationModel(backbone="resnet18", output_stride=32, eval_mode="sliding")


def test_flip_alone_is_a_test_time_protocol_and_evaluation_follows_it():
    torch.manual_seed(0)
    plain = SegmentationModel(backbone="resnet18", num_classes=4, output_stride=32).eval()
    flipped = SegmentationModel(backbone="resnet18", num_classes=4, output_stride=32, tta_flip=True).eval()
    flipped.load_state_dict(plain.state_dict())
    assert not plain.uses_tta() and flipped.uses_tta()
    images = torch.rand(2, 3, 64, 96)
    decoy = torch.zeros(2, 4, 64, 96)
    decoy[:, 3] = 1.0  # logits that say "class 3 everywhere"
    with torch.no_grad():
        # without TTA the given logits are the prediction; with flip TTA the images are evaluated again
        assert torch.equal(plain.evaluation_prediction(images, decoy), torch.full((2, 64, 96), 3))
        logits = plain(images)
        expected = (logits.softmax(1) + plain(images.flip(-1)).flip(-1).softmax(1)).argmax(1)
        assert torch.equal(flipped.evaluation_prediction(images, decoy), expected)
        assert torch.equal(flipped.predict_step((images, None), 0), expected)


def test_training_and_validation_log_their_metrics(voc_fixture):
    L.seed_everything(0)
    model = SegmentationModel(
        backbone="resnet18", output_stride=32, pooling="ppool", pooling_kwargs={"alpha_mode": "channel"}
    )
    dm = VOCSegmentationDataModule(voc_fixture, batch_size=4, num_workers=0, crop_size=64)
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        limit_val_batches=1,
        val_check_interval=1,
    )
    trainer.fit(model, dm)
    assert {"train/loss", "val/mIoU"} <= set(trainer.progress_bar_metrics)
    metrics = trainer.callback_metrics
    per_class = torch.stack([metrics[f"val/IoU/{name}"] for name in model.class_names])
    assert metrics["val/mIoU"] == pytest.approx(torch.nanmean(per_class).item())
    torch.testing.assert_close(per_class, model.last_val_iou.float(), equal_nan=True)
    alpha = model.network.backbone.get_submodule("features.maxpool").alpha_stats()
    assert metrics["alpha/features.maxpool/mean"] == pytest.approx(alpha["mean"])


def test_alpha_histogram_bins_the_fixed_range_even_when_it_is_empty():
    from polypool.models.segmentation import alpha_histogram

    counts, edges = alpha_histogram(torch.tensor([1.0, 2.5, 50.0, 30.0]), (1.0, 50.0))
    assert (edges[0], edges[-1], len(counts), counts.sum()) == (1.0, 50.0, 64, 4)
    counts, edges = alpha_histogram(torch.tensor([30.0, 30.0]), (30.0, 30.0))  # a fixed alpha
    assert (edges[0], edges[-1], counts[0], counts.sum()) == (30.0, 31.0, 2, 2)


def test_backbone_biases_get_the_bias_multiplier_and_no_decay():
    model = SegmentationModel(
        backbone="vgg16",
        pooling="max",
        head="vgg16_20m",
        lr=1e-3,
        weight_decay=5e-4,
        bias_lr_mult=2.0,
        head_lr_mult=10.0,
    )
    groups = groups_by_name(model)
    assert (groups["backbone/bias"]["lr"], groups["backbone/bias"]["weight_decay"]) == (pytest.approx(2e-3), 0.0)
    assert (groups["backbone/weight"]["lr"], groups["head/bias"]["lr"]) == (pytest.approx(1e-3), pytest.approx(2e-2))
    conv1 = model.network.backbone[0]
    assert any(p is conv1.bias for p in groups["backbone/bias"]["params"])


def test_adamw_takes_the_same_parameter_groups():
    model = SegmentationModel(
        backbone="resnet18", pooling="ppool", output_stride=32, optimizer="adamw", lr=1e-3, weight_decay=0.05
    )
    model.trainer = type("FakeTrainer", (), {"estimated_stepping_batches": 10})()
    optimizer = model.configure_optimizers()["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (g["name"], g["lr"], g["weight_decay"]) for g in model.parameter_groups()
    ]
    sgd = SegmentationModel(backbone="resnet18", output_stride=32)
    sgd.trainer = model.trainer
    assert type(sgd.configure_optimizers()["optimizer"]) is torch.optim.SGD


def test_build_network_defaults_to_output_stride_8():
    from polypool.models.networks import build_network

    network = build_network("resnet18", num_classes=3)
    assert network.backbone(torch.rand(1, 3, 65, 65)).shape[-2:] == (9, 9)  # 65 -> 33 -> 17 -> 9


def test_network_weights_load_from_a_checkpoint_or_a_state_dict_and_must_fit(tmp_path):
    from polypool.models.segmentation import load_network_weights

    torch.manual_seed(0)
    trained = SegmentationModel(backbone="resnet18", num_classes=3, output_stride=32)
    with torch.no_grad():
        for param in trained.network.parameters():
            param.add_(torch.randn_like(param))
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "run.ckpt")
    torch.save(trained.network.state_dict(), tmp_path / "network.pth")
    for file in ("run.ckpt", "network.pth"):
        fresh = SegmentationModel(backbone="resnet18", num_classes=3, output_stride=32)
        load_network_weights(fresh.network, str(tmp_path / file))
        for (name, a), b in zip(trained.network.state_dict().items(), fresh.network.state_dict().values()):
            assert torch.equal(a, b), (file, name)
    # the constructor's network_weights takes the same files
    loaded = SegmentationModel(
        backbone="resnet18", num_classes=3, output_stride=32, network_weights=str(tmp_path / "run.ckpt")
    )
    assert torch.equal(loaded.network.head.branches[0].weight, trained.network.head.branches[0].weight)
    with pytest.raises(FileNotFoundError, match=r"network_weights file .*missing\.ckpt does not exist"):
        load_network_weights(fresh.network, str(tmp_path / "missing.ckpt"))
    other = SegmentationModel(backbone="resnet18", num_classes=5, output_stride=32)
    with pytest.raises(
        ValueError,
        match=r"does not fit this network.*wrong shape \['head\.branches\.0\.bias', "
        r"'head\.branches\.0\.weight', ",
    ):
        load_network_weights(other.network, str(tmp_path / "network.pth"))
    partial = {k: v for k, v in trained.network.state_dict().items() if not k.startswith("head.")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing \['head\..*unexpected \['extra\.weight'\]"):
        load_network_weights(fresh.network, str(tmp_path / "partial.pth"))


def test_dense_alpha_maps_reach_wandb_as_images_scaled_to_the_alpha_range(monkeypatch):
    import wandb

    model = SegmentationModel(
        backbone="resnet18", pooling="ppool", output_stride=32, pooling_kwargs={"alpha_mode": "dense"}
    )
    logged = []
    run = type("Run", (), {"log": lambda self, data: logged.append(data)})()
    monkeypatch.setattr(model, "_wandb_runs", lambda: [run])
    images = torch.rand(2, 3, 64, 96)
    model._log_dense_alpha_maps(images)
    alpha = model.dense_alpha_maps(images)["features.maxpool"]
    low, high = model.network.backbone.get_submodule("features.maxpool").alpha_range
    assert len(logged) == 1 and logged[0]["trainer/global_step"] == 0
    image = logged[0]["alpha_map/features.maxpool"]
    assert isinstance(image, wandb.Image) and f"{low:g} black to {high:g} white" in image._caption
    expected = ((alpha.mean(0) - low) / (high - low)).clamp(0, 1)
    assert image.image.size == (24, 16)  # a PIL image of the (16, 24) map
    # grey levels 0..255 (wandb casts to uint8 without scaling: a [0, 1] map would be logged all black)
    np.testing.assert_allclose(np.asarray(image.image, dtype=np.float64) / 255, expected.numpy(), atol=0.5 / 255 + 1e-6)


def test_alpha_summary_gives_the_spatial_spread_of_a_dense_alpha():
    from polypool.callbacks import alpha_summary

    torch.manual_seed(0)
    dense = SegmentationModel(
        backbone="resnet18", pooling="ppool", output_stride=32, pooling_kwargs={"alpha_mode": "dense"}
    )
    branch = dense.network.backbone.get_submodule("features.maxpool").alpha_branch
    with torch.no_grad():  # let alpha vary over positions and channels (at init it is ~30 everywhere)
        branch.proj.weight.normal_(0, 20)
    probe = torch.rand(1, 3, 64, 96)
    stats = alpha_summary(dense, probe)["features.maxpool"]
    alpha = dense.eval().dense_alpha_maps(probe)["features.maxpool"].double()  # (64, 16, 24), as the summary sees it
    assert stats["mode"] == "dense" and stats["mean"] == pytest.approx(alpha.mean().item())
    assert stats["std"] == pytest.approx(alpha.std(unbiased=False).item())
    spatial = torch.stack([alpha[c].std(unbiased=False) for c in range(64)]).mean().item()
    assert stats["spatial_std"] == pytest.approx(spatial) and 0 < spatial < stats["std"]
    channel = SegmentationModel(
        backbone="resnet18", pooling="ppool", output_stride=32, pooling_kwargs={"alpha_mode": "channel"}
    )
    assert "spatial_std" not in alpha_summary(channel, probe)["features.maxpool"]  # one alpha per channel
