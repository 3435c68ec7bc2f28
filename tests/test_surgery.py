"""swap_pooling on timm backbones: exact site counts, exact equivalences, gradients, feature extraction."""

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import create_pool2d, get_notrace_functions, get_notrace_modules
from timm.layers.pos_embed import resample_abs_pos_embed_nhwc
from torch import nn

from polypool.pooling import PPool2d, pooling_parameters
from polypool.surgery import find_pooling_sites, swap_pooling

# Counted by hand in timm 1.0.x sources (pretrained=False everywhere: there is no network here).
EXPECTED_COUNTS = {  # (module max, module avg, functional max, functional avg)
    "vgg16": (5, 0, 0, 0),  # features: five MaxPool2d(2, 2)
    "resnet50": (1, 0, 0, 0),  # the stem's MaxPool2d(3, 2, 1)
    "resnet50d": (1, 3, 0, 0),  # the stem, and avg_down's AvgPool2d in layers 2-4
    "densenet121": (1, 3, 0, 0),  # the stem, and the three transitions
    "inception_v3": (2, 0, 2, 9),  # Pool1/Pool2; InceptionB/D F.max_pool2d; InceptionA x3, C x4, E x2 F.avg_pool2d
    "inception_v4": (4, 14, 0, 0),
}
PPOOL_AS_MAX = {"alpha_init": 1e4, "alpha_range": (0.0, 1e4)}
PPOOL_AS_AVG = {"avg": {"alpha_init": 0.0}}


def counts(report):
    return (
        report.count("module", "max"),
        report.count("module", "avg"),
        report.count("functional", "max"),
        report.count("functional", "avg"),
    )


def small_input(name, batch=2):
    size = 299 if "inception" in name else 96
    return torch.rand(batch, 3, size, size)


@pytest.mark.parametrize("name", list(EXPECTED_COUNTS))
def test_exact_site_counts_and_bit_exact_swap_to_the_same_pooling(name):
    model = timm.create_model(name, pretrained=False).eval()
    x = small_input(name, batch=1)
    with torch.no_grad():
        before = model(x)
    report = swap_pooling(model, {"max": "max", "avg": "avg"}, input_size=tuple(x.shape[1:]))
    assert counts(report) == EXPECTED_COUNTS[name]
    assert len(report.swapped) == sum(EXPECTED_COUNTS[name])
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)  # bit for bit


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "inception_v3", "densenet121"])
def test_ppool_at_large_alpha_is_max_and_at_zero_is_avg(name):
    model = timm.create_model(name, pretrained=False).eval()
    x = small_input(name, batch=1)
    with torch.no_grad():
        before = model(x)
    report = swap_pooling(model, "ppool", input_size=tuple(x.shape[1:]), kind_kwargs=PPOOL_AS_AVG, **PPOOL_AS_MAX)
    assert len(report.swapped) == len(report.local_sites) > 0
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-3 * before.abs().max().item())


def test_every_alpha_gets_a_gradient_after_a_swap():
    model = timm.create_model("inception_v3", pretrained=False)
    report = swap_pooling(model, "ppool", alpha_mode="channel", alpha_init=5.0)
    assert len(report.swapped) == 13
    model(torch.rand(2, 3, 160, 160)).square().mean().backward()
    alphas = dict(pooling_parameters(model))
    assert len(alphas) == 13
    for name, alpha in alphas.items():
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0, name


def test_report_table_lists_every_site():
    model = timm.create_model("inception_v3", pretrained=False)
    report = swap_pooling(model, {"max": "ppool", "avg": None})
    text = str(report)
    assert "4 of 13 local pooling sites swapped" in text
    assert "Mixed_6a.max_pool2d" in text and "F.max_pool2d -> PPool2d" in text
    assert "left: avg sites are not swapped" in text
    assert "global_pool" in text and "left: global/adaptive pooling" in text
    assert isinstance(model.Mixed_6a.polypool_max_pool2d, PPool2d)


def test_features_only_and_output_stride_keep_working():
    model = timm.create_model("resnet50d", pretrained=False, features_only=True, output_stride=8)
    channels = model.feature_info.channels()
    report = swap_pooling(model, "ppool", input_size=(3, 64, 64))
    assert counts(report) == (1, 3, 0, 0)
    features = model(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == channels
    assert [f.shape[-1] for f in features] == [32, 16, 8, 8, 8]  # output stride 8


def test_inception_features_and_forward_intermediates_after_a_functional_swap():
    model = timm.create_model("inception_v3", pretrained=False, features_only=True)
    report = swap_pooling(model, "ppool")
    assert counts(report) == EXPECTED_COUNTS["inception_v3"]
    features = model(torch.rand(1, 3, 160, 160))
    assert [f.shape[1] for f in features] == model.feature_info.channels()

    full = timm.create_model("inception_v3", pretrained=False)
    swap_pooling(full, "ppool")
    final, intermediates = full.forward_intermediates(torch.rand(1, 3, 160, 160))
    assert len(intermediates) == len(full.feature_info) and final.shape[1] == 2048
    keys = set(full.state_dict())
    assert "Mixed_5b.branch1x1.conv.weight" in keys and "Mixed_5b.polypool_avg_pool2d.alpha" in keys


def test_same_padding_pools_keep_their_padding():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        create_pool2d("max", 3, stride=2, padding="same"),
        create_pool2d("avg", 3, stride=2, padding="same"),
    )
    assert [type(m).__name__ for m in model][2:] == ["MaxPool2dSame", "AvgPool2dSame"]
    x = torch.rand(1, 3, 17, 18)
    before = model(x)
    report = swap_pooling(model, "ppool", input_size=(3, 17, 18), kind_kwargs=PPOOL_AS_AVG, **PPOOL_AS_MAX)
    assert [s.new for s in report.swapped] == ["SamePadded(PPool2d)", "SamePadded(PPool2d)"]
    torch.testing.assert_close(model(x), before, rtol=1e-3, atol=1e-4)


def test_a_model_without_pooling_gets_a_report_of_zero_and_a_warning():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    with pytest.warns(UserWarning, match="no local pooling site"):
        report = swap_pooling(model, "ppool", input_size=(3, 16, 16))
    assert len(report.swapped) == 0 and "0 of 0 local pooling sites swapped" in str(report)
    assert {s.old for s in report.sites} == {"Conv2d", "AdaptiveAvgPool2d"}


def test_an_argument_the_target_cannot_express_names_the_site_and_changes_nothing():
    model = timm.create_model("inception_v4", pretrained=False).eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"cannot swap features\.6\.branch3\.0 \(AvgPool2d.*count_include_pad=False"):
        swap_pooling(model, "strided_conv", input_size=(3, 96, 96))  # a learned conv: no "padding not counted"
    assert all(
        isinstance(model.get_submodule(s.name), nn.MaxPool2d) for s in find_pooling_sites(model) if s.kind == "max"
    )
    assert model.state_dict().keys() == state.keys()
    with torch.no_grad():
        assert torch.equal(model(x), before)
    dilated = nn.Sequential(nn.MaxPool2d(3, 1, 1, dilation=2))
    with pytest.raises(ValueError, match="only 'max' supports a dilated window"):
        swap_pooling(dilated, "ppool", input_size=(1, 8, 8))


def test_ppool_carries_count_include_pad_false_over():
    """inception_v4's padded AvgPool2d(count_include_pad=False) sites become P-pooling that leaves the padding out
    (at alpha = 0 exactly the average pool they replace)."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.AvgPool2d(3, 2, 1)
    )
    x = torch.rand(2, 3, 9, 9)
    with torch.no_grad():
        before = model(x)
    report = swap_pooling(model, "ppool", input_size=(3, 9, 9), alpha_init=0.0, alpha_range=(0.0, 1.0))
    assert len(report.swapped) == 2
    assert [model[2].count_include_pad, model[3].count_include_pad] == [False, True]
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
    model = timm.create_model("inception_v4", pretrained=False).eval()
    swap_pooling(model, "ppool", input_size=(3, 96, 96))
    assert model.get_submodule("features.6.branch3.0").count_include_pad is False


def test_average_sites_that_leave_the_padding_out_swap_to_max():
    """Max pooling pads with -inf and counts no padding, so an AvgPool2d(count_include_pad=False) site swaps to max
    like any other (issue 29, section 6: timm's inception_resnet_v2 raised here)."""
    model = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False))
    report = swap_pooling(model, "max", input_size=(2, 6, 6))
    assert len(report.swapped) == 1 and isinstance(model[0], nn.MaxPool2d)
    x = torch.randn(1, 2, 6, 6)
    torch.testing.assert_close(model(x), torch.nn.functional.max_pool2d(x, 3, 1, 1))
    timm_model = timm.create_model("inception_resnet_v2", pretrained=False).eval()
    report = swap_pooling(timm_model, {"max": "max", "avg": "max"}, input_size=(3, 96, 96))  # max_all
    assert [s.name for s in report.swapped if s.kind == "avg"] == ["mixed_5b.branch3.0"]
    assert isinstance(timm_model.get_submodule("mixed_5b.branch3.0"), nn.MaxPool2d)


class TrainingBranch(nn.Module):
    """A block whose forward pools differently in training and in eval."""

    def forward(self, x):
        if self.training:
            return F.max_pool2d(x, 2)
        return F.avg_pool2d(x, 3, 1, 1)


def test_functional_sites_in_training_only_branches_are_swapped_in_both_modes():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), TrainingBranch())
    report = swap_pooling(model, "ppool", input_size=(3, 8, 8))
    assert counts(report) == (0, 0, 1, 1) and len(report.swapped) == 2
    block = model[2]
    x = torch.rand(1, 3, 8, 8)
    assert model.train()(x).shape[-1] == 4 and model.eval()(x).shape[-1] == 8
    assert isinstance(block.polypool_max_pool2d, PPool2d) and isinstance(block.polypool_avg_pool2d, PPool2d)


def independent_count(model: nn.Module) -> int:
    """Pooling modules by type, plus the functional calls with a fixed window found by tracing the whole model."""
    modules = sum(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())
    leaves = tuple(get_notrace_modules())

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualified_name):
            return isinstance(m, leaves) or super().is_leaf_module(m, qualified_name)

    graph = Tracer(autowrap_functions=tuple(f for f in get_notrace_functions() if callable(f))).trace(model)
    functional = 0
    for node in graph.nodes:
        if node.op == "call_function" and (node.target is F.max_pool2d or node.target is F.avg_pool2d):
            kernel = node.args[1] if len(node.args) > 1 else node.kwargs["kernel_size"]
            fixed = not isinstance(kernel, torch.fx.Node) and not (
                isinstance(kernel, (tuple, list)) and any(isinstance(k, torch.fx.Node) for k in kernel)
            )
            functional += fixed
    return modules + functional


SWEEP = [
    "resnet18",
    "resnet18d",
    "resnet26t",
    "resnet34",
    "resnet50d",
    "resnetaa50",
    "resnetv2_50d",
    "resnext26ts",
    "seresnext26d_32x4d",
    "ecaresnet26t",
    "eca_resnext26ts",
    "legacy_seresnet18",
    "legacy_seresnext26_32x4d",
    "skresnet18",
    "res2net50_14w_8s",
    "res2next50",
    "resnest14d",
    "resnetblur18",
    "nf_resnet26",
    "nf_regnet_b0",
    "tresnet_m",
    "densenet121",
    "vgg11",
    "inception_v3",
    "ese_vovnet19b_dw",
    "dla34",
    "dla46_c",
    "dpn68",
    "cspresnet50",
    "ghostnetv2_100",
    "botnet26t_256",
    "lambda_resnet26t",
]
# Padded average pools with count_include_pad=False: P-pooling leaves the padding out there too (issue 17).
SWEEP_EXCLUDING_PAD = ["inception_v4", "inception_resnet_v2", "poolformer_s12"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEP + SWEEP_EXCLUDING_PAD)
def test_sweep_timm_architectures(name):
    model = timm.create_model(name, pretrained=False)
    expected = independent_count(model)
    assert expected > 0, f"{name} has no local pooling: it does not belong in the sweep"
    size = 256 if name.endswith("_256") else 96
    report = swap_pooling(model, "ppool", input_size=(3, size, size))
    assert len(report.local_sites) == len(report.swapped) == expected
    out = model(torch.rand(2, 3, size, size))
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    for param_name, param in pooling_parameters(model):
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name


class CeilModeSites(nn.Module):
    """Ceil-mode pooling sites, module and functional (positional and keyword), each fed a map size where ceil and
    floor mode give different output sizes (13 -> 7 vs 6 for 2x2/2, 13 -> 5 vs 4 for 3x3/3)."""

    def __init__(self):
        super().__init__()
        self.avg = nn.AvgPool2d(2, 2, ceil_mode=True)
        self.max = nn.MaxPool2d(3, 3, ceil_mode=True)

    def forward(self, x):
        return (
            self.avg(x),
            self.max(x),
            F.avg_pool2d(x, 3, 3, 0, True),
            F.avg_pool2d(x, kernel_size=2, ceil_mode=True),
            F.max_pool2d(x, 2, 2, 0, 1, True),
        )


CEIL_SITES = {  # site name -> (kernel, stride, padding, output size on 13x13)
    "avg": ((2, 2), (2, 2), (0, 0), 7),
    "max": ((3, 3), (3, 3), (0, 0), 5),
    "avg_pool2d": ((3, 3), (3, 3), (0, 0), 5),
    "avg_pool2d_1": ((2, 2), (2, 2), (0, 0), 7),
    "max_pool2d": ((2, 2), (2, 2), (0, 0), 7),
}


def ceil_site_layers(model):
    return {
        "avg": model.avg,
        "max": model.max,
        "avg_pool2d": model.polypool_avg_pool2d,
        "avg_pool2d_1": model.polypool_avg_pool2d_1,
        "max_pool2d": model.polypool_max_pool2d,
    }


@pytest.mark.parametrize("target", ["ppool", "avg", "gated", "strided_conv"])
def test_ceil_mode_carries_over_to_every_site_at_odd_sizes(target):
    model = CeilModeSites()
    x = torch.rand(2, 3, 13, 13)
    before = model(x)
    assert [y.shape[-1] for y in before] == [7, 5, 5, 7, 7]
    kwargs = {"kind_kwargs": PPOOL_AS_AVG, **PPOOL_AS_MAX} if target == "ppool" else {}
    report = swap_pooling(model, target, input_size=(3, 13, 13), **kwargs)
    assert counts(report) == (1, 1, 1, 2) and len(report.swapped) == 5
    assert {s.name.rpartition(".")[2] or s.name: s.args["ceil_mode"] for s in report.sites} == dict.fromkeys(
        CEIL_SITES, True
    )
    for name, layer in ceil_site_layers(model).items():  # the new layer's own arguments
        kernel, stride, padding, _ = CEIL_SITES[name]
        assert (
            type(layer).__name__
            == {"ppool": "PPool2d", "avg": "AvgPool2d", "gated": "GatedPool2d", "strided_conv": "StridedConvPool2d"}[
                target
            ]
        ), name
        assert (tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding), layer.ceil_mode) == (
            kernel,
            stride,
            padding,
            True,
        ), name
    after = model(x)
    assert [y.shape[-1] for y in after] == [size for *_, size in CEIL_SITES.values()]
    if target == "ppool":  # alpha = 0 at the avg sites, 1e4 at the max sites: the same values, overhang included
        for old, new in zip(before, after):
            torch.testing.assert_close(new, old, rtol=1e-3, atol=1e-4)
    if target == "avg":  # the avg sites bit for bit, the max sites now average the same (ceil-mode) windows
        for i in (0, 2, 3):
            assert torch.equal(after[i], before[i])
        torch.testing.assert_close(after[1], F.avg_pool2d(x, 3, 3, 0, True))
        torch.testing.assert_close(after[4], F.avg_pool2d(x, 2, 2, 0, True))


class ThreeSites(nn.Module):
    """A module site, a functional site and an adaptive pool that no swap touches."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.head = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = F.avg_pool2d(self.pool(self.conv(x)), 3, 1, 1, ceil_mode=True)
        return self.head(x)


def test_report_text_exactly():
    """The table a user reads after a swap (mutmut: its header counts, columns and rule were untested)."""
    report = swap_pooling(ThreeSites(), "gated", input_size=(3, 16, 16))
    assert str(report).splitlines() == [
        "swap_pooling('gated'): 2 of 2 local pooling sites swapped (1 modules, 1 functional calls); 1 other "
        "pooling-like layers left alone",
        "",
        "site        source      old -> new                   arguments                                 channels  status",
        "----------  ----------  ---------------------------  ----------------------------------------  --------  ------",
        "avg_pool2d  functional  F.avg_pool2d -> GatedPool2d  s=1, p=1, ceil=True, count_pad=True, k=3  4         swapped",
        "pool        module      MaxPool2d -> GatedPool2d     k=2, s=2, p=0, ceil=False                 4         swapped",
        "head        module      AdaptiveAvgPool2d                                                                left: "
        "adaptive pooling: not a local window",
    ]
    report.notes.append("a note")
    assert str(report).endswith("\nnote: a note")


class ArgumentSites(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.MaxPool2d((2, 3), 1, dilation=2)
        self.b = nn.AvgPool2d(2, divisor_override=3)
        self.c = nn.MaxPool2d(3, 1, dilation=(1, 1))
        self.d = create_pool2d("max", 3, 2, padding="same")

    def forward(self, x):
        return self.d(self.c(self.b(self.a(x))))


def test_site_arguments_are_described_compactly():
    """Square pairs as one number, others as AxB; dilation only when not 1, divisor only when set; SAME padding."""
    described = {s.name: s.describe_args() for s in find_pooling_sites(ArgumentSites())}
    assert described == {
        "a": "k=2x3, s=1, p=0, d=2, ceil=False",
        "b": "k=2, s=2, p=0, ceil=False, count_pad=True, divisor=3",
        "c": "k=3, s=1, p=0, ceil=False",
        "d": "k=3, s=2, p=0, ceil=False, SAME",
    }


def test_find_pooling_sites_lists_every_site_and_changes_nothing():
    """The sites themselves, in the model's order, module and functional (mutmut: a wrong element of the finder's
    result passed a test whose model had module sites only)."""
    model = ThreeSites()
    before = {name: type(m) for name, m in model.named_modules()}
    sites = find_pooling_sites(model)
    assert [(s.name, s.source, s.old, s.kind, s.swapped) for s in sites] == [
        ("avg_pool2d", "functional", "F.avg_pool2d", "avg", False),
        ("pool", "module", "MaxPool2d", "max", False),
        ("head", "module", "AdaptiveAvgPool2d", None, False),
    ]
    assert {name: type(m) for name, m in model.named_modules()} == before


def test_same_padded_pads_as_timm_does_by_default():
    """SamePadded(pool, k, s) behind a plain AvgPool2d is timm's AvgPool2dSame: zeros padded, counted."""
    from timm.layers.pool2d_same import AvgPool2dSame

    from polypool.surgery import SamePadded

    x = torch.rand(2, 3, 9, 10) + 1.0  # a padded 1 (not 0) would show at every border window
    padded = SamePadded(nn.AvgPool2d(3, 2, count_include_pad=True), (3, 3), (2, 2))
    torch.testing.assert_close(padded(x), AvgPool2dSame(3, 2)(x), rtol=0, atol=0)


def test_same_padded_max_sites_keep_minus_infinity_padding_and_dilation():
    """A TF-"SAME" max pool with dilation 2, swapped to max pooling, still equals timm's MaxPool2dSame on negative
    inputs: the padding is -inf (0 would win every border window) and its amount follows the dilation."""
    from timm.layers.pool2d_same import MaxPool2dSame

    model = nn.Sequential(MaxPool2dSame(3, 2, dilation=2))
    x = -torch.rand(2, 3, 11, 12) - 1.0
    before = model(x)
    report = swap_pooling(model, {"max": "max"}, input_size=(3, 11, 12))
    assert [s.new for s in report.swapped] == ["SamePadded(MaxPool2d)"]
    after = model(x)
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_a_dilated_max_site_swapped_to_max_keeps_its_dilation():
    """The one target that can express a dilated window gets it (it was dropped: a 3x3 window with dilation 2 became
    a plain 3x3 one, with a different output size and values)."""
    model = nn.Sequential(nn.MaxPool2d(3, 1, padding=1, dilation=2))
    x = torch.randn(1, 2, 9, 9)
    before = model(x)
    swap_pooling(model, "max", input_size=(2, 9, 9))
    assert isinstance(model[0], nn.MaxPool2d) and model[0].dilation == 2 and model[0].kernel_size == (3, 3)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


# --- issue 19: survivors of the mutation run on surgery.py ---------------------------------------------------------


class ClashingAttribute(nn.Module):
    """A block that already owns the attribute name the swap would give its functional site's new layer."""

    def __init__(self):
        super().__init__()
        self.polypool_max_pool2d = 5

    def forward(self, x):
        return F.max_pool2d(x, 2)


def test_an_owner_attribute_in_the_way_of_the_new_layer_is_an_error():
    """Overwriting a user's attribute would break the block silently: the swap refuses and names it."""
    model = ClashingAttribute()
    with pytest.raises(
        ValueError,
        match=r"^ClashingAttribute already has an attribute 'polypool_max_pool2d'; cannot "
        r"add the pooling layer$",
    ):
        swap_pooling(model, "max", input_size=(3, 8, 8))
    assert model.polypool_max_pool2d == 5 and type(model) is ClashingAttribute


class Unreached(nn.Module):
    """A pooling module the forward never calls: the dummy forward cannot see its channels."""

    def __init__(self):
        super().__init__()
        self.used = nn.MaxPool2d(2)
        self.unused = nn.MaxPool2d(3)

    def forward(self, x):
        return self.used(x)


def test_a_build_error_says_when_the_dummy_forward_never_reached_the_site():
    """Only a site without channels gets the input_size hint; any other build error is the layer's own text."""
    with pytest.raises(ValueError) as error:
        swap_pooling(Unreached(), "strided_conv", input_size=(3, 8, 8))
    assert str(error.value) == (
        "cannot swap unused (MaxPool2d, k=3, s=3, p=0, ceil=False) to 'strided_conv': strided_conv pooling learns a "
        "channels -> channels convolution: pass channels=C (the dummy forward never reached this site, so its "
        "channels are unknown: pass input_size=(C, H, W) that reaches it)"
    )
    with pytest.raises(ValueError) as error:
        swap_pooling(nn.Sequential(nn.MaxPool2d(2)), "max", input_size=(3, 8, 8), alpha_mode="channel")
    assert str(error.value) == (
        "cannot swap 0 (MaxPool2d, k=2, s=2, p=0, ceil=False) to 'max': pooling 'max' got "
        "unexpected option(s) ['alpha_mode']; it accepts ['channels', 'dilation']"
    )


class InputRecorder(nn.Module):
    """Records the shape of every input it sees, in front of a pooling site."""

    def __init__(self, cfg_attribute=None, cfg=None):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.shapes = []
        if cfg_attribute:
            setattr(self, cfg_attribute, cfg)

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.pool(x)


def test_the_dummy_forward_is_one_sample_of_the_configured_or_default_size():
    """One sample (the cheapest forward) of pretrained_cfg's, else default_cfg's input_size, else (3, 224, 224):
    a plain nn.Module has neither config."""
    plain = InputRecorder()
    swap_pooling(plain, "max")
    assert plain.shapes == [(1, 3, 224, 224)]
    old_timm = InputRecorder("default_cfg", {"input_size": (2, 12, 10)})  # older timm models: default_cfg only
    report = swap_pooling(old_timm, "max")
    assert old_timm.shapes == [(1, 2, 12, 10)] and report.sites[0].channels == 2
    new_timm = InputRecorder("pretrained_cfg", {"input_size": (4, 6, 6)})
    swap_pooling(new_timm, "max")
    assert new_timm.shapes == [(1, 4, 6, 6)]


def test_strided_convolutions_are_listed_with_their_window():
    (site,) = find_pooling_sites(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2)))
    assert (site.name, site.old, site.kind, site.args, site.describe_args(), site.reason) == (
        "0",
        "Conv2d",
        None,
        {"kernel_size": (3, 3), "stride": (2, 2)},
        "k=3, s=2",
        "strided convolution: a learned layer, not a pooling",
    )


class KeywordCalls(nn.Module):
    def forward(self, x):  # every argument by keyword, the input too: these two keep it in the traced call's kwargs
        return F.avg_pool2d(input=x, kernel_size=2), torch.max_pool2d(input=x, kernel_size=3)


def test_functional_calls_with_the_input_by_keyword_are_swapped():
    """The input is no window argument (it must not make a site look shape-dependent), and the new layer is fed it
    (the rewrite took the call's first positional argument: an IndexError)."""
    model = KeywordCalls()
    x = torch.randn(1, 3, 9, 9)
    before = model(x)
    report = swap_pooling(model, {"max": "max", "avg": "avg"}, input_size=(3, 9, 9))
    assert [(s.name, s.kind, s.swapped, s.args) for s in report.sites] == [
        (
            "avg_pool2d",
            "avg",
            True,
            {
                "stride": 2,
                "padding": 0,
                "ceil_mode": False,
                "count_include_pad": True,
                "divisor_override": None,
                "kernel_size": 2,
            },
        ),
        ("max_pool2d", "max", True, {"stride": 3, "padding": 0, "dilation": 1, "ceil_mode": False, "kernel_size": 3}),
    ]
    avg, max_ = model.polypool_avg_pool2d, model.polypool_max_pool2d
    assert (type(avg), avg.kernel_size, avg.stride, avg.ceil_mode) == (nn.AvgPool2d, (2, 2), (2, 2), False)
    assert (type(max_), max_.kernel_size, max_.stride, max_.ceil_mode) == (nn.MaxPool2d, (3, 3), (3, 3), False)
    after = model(x)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])


class TupleWindows(nn.Module):
    """A fixed (2, 2) window, and a global one built from the input's shape."""

    def forward(self, x):
        return F.avg_pool2d(x, (2, 2)), F.max_pool2d(x, (x.shape[2], x.shape[3]))


def test_tuple_windows_are_swapped_unless_an_element_comes_from_the_input():
    model = TupleWindows()
    x = torch.randn(1, 3, 8, 8)
    before = model(x)
    report = swap_pooling(model, {"max": "max", "avg": "avg"}, input_size=(3, 8, 8))
    fixed, global_ = report.sites
    assert (fixed.name, fixed.kind, fixed.swapped, fixed.describe_args()) == (
        "avg_pool2d",
        "avg",
        True,
        "s=2, p=0, ceil=False, count_pad=True, k=2",
    )
    # every key of a site left alone is described, those without a short name by their own name
    assert (global_.name, global_.kind, global_.swapped, global_.reason, global_.describe_args()) == (
        "max_pool2d",
        None,
        False,
        "kernel_size computed from the input (a global or shape-dependent pooling)",
        "s=None, p=0, ceil=False, return_indices=False, k=getitemxgetitem_1",
    )
    after = model(x)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])


def test_global_adaptive_and_blur_layers_of_timm_are_left_alone_with_their_reason():
    """FastAdaptiveAvgMaxPool is not exported by timm.layers: it was never matched (so never listed)."""
    from timm.layers import AdaptiveAvgMaxPool2d, BlurPool2d
    from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgMaxPool

    model = nn.Sequential(BlurPool2d(3), AdaptiveAvgMaxPool2d(1), FastAdaptiveAvgMaxPool())
    sites = find_pooling_sites(model)
    head = "global/adaptive pooling (classifier head): not a local window"
    assert [(s.name, s.old, s.kind, s.reason) for s in sites] == [
        ("0", "BlurPool2d", None, "anti-aliasing blur filter, not a pooling of the paper"),
        ("1", "AdaptiveAvgMaxPool2d", None, head),
        ("2", "FastAdaptiveAvgMaxPool", None, head),
    ]


def test_a_max_pool_returning_indices_is_left_alone_with_its_reason():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.MaxPool2d(2, return_indices=True))
    with pytest.warns(UserWarning, match="no local pooling site"):
        report = swap_pooling(model, "ppool", input_size=(3, 8, 8))
    assert [(s.name, s.old, s.kind, s.swapped, s.reason) for s in report.sites] == [
        ("1", "MaxPool2d", None, False, "returns indices (for unpooling): only max pooling can give them")
    ]
    assert type(model[1]) is nn.MaxPool2d


class DilatedCall(nn.Module):
    """A functional site (the same node in the training and the eval graph) that only 'max' can express."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return F.max_pool2d(self.conv(x), 3, 1, 1, 2)


def test_a_failed_swap_undoes_the_rewrite_of_a_functional_site():
    """The block was already rewritten (its class replaced, a child added) when the build failed: both go back."""
    model = DilatedCall().eval()
    x = torch.randn(1, 3, 9, 9)
    before = model(x)
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match="only 'max' supports a dilated window"):
        swap_pooling(model, "ppool", input_size=(3, 9, 9))
    assert type(model) is DilatedCall
    assert not hasattr(model, "polypool_max_pool2d") and set(model.state_dict()) == keys
    assert torch.equal(model(x), before)
    swap_pooling(model, "max", input_size=(3, 9, 9))  # and it can still be swapped
    assert model.polypool_max_pool2d.dilation == 2 and torch.equal(model(x), before)


def test_divisor_override_and_count_include_pad_carry_over_to_avg():
    """Swapped to 'avg', the one target that expresses both, the two avg sites give exactly what they gave (P-pooling
    keeps count_include_pad too: test_ppool_carries_count_include_pad_false_over)."""
    model = nn.Sequential(nn.AvgPool2d(2, divisor_override=3), nn.AvgPool2d(3, 2, 1, count_include_pad=False))
    x = torch.rand(2, 3, 12, 12) + 1.0  # away from 0: a counted padding would show at every border window
    before = model(x)
    report = swap_pooling(model, "avg", input_size=(3, 12, 12))
    assert [s.new for s in report.sites] == ["AvgPool2d", "AvgPool2d"]
    assert (model[0].divisor_override, model[1].count_include_pad) == (3, False)
    assert torch.equal(model(x), before)


class Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self, pools):
        super().__init__()
        self.pools = pools

    def forward(self, x):
        if x.sum() > 0:
            x = x + 1
        return F.max_pool2d(x, 2) if self.pools else x


class UntraceableWithoutPooling(Untraceable):
    def forward(self, x):
        if x.sum() > 0:
            x = x + 1
        return x


def test_an_untraceable_forward_gets_a_note_only_when_it_calls_a_pooling():
    """The user must hear of functional poolings that were not swapped, and not of every untraceable block."""
    with pytest.warns(UserWarning, match="no local pooling site"):
        report = swap_pooling(Untraceable(pools=True), "ppool", input_size=(3, 8, 8))
    assert report.notes == [
        "could not trace the model (Untraceable: TraceError: symbolically traced variables cannot "
        "be used as inputs to control flow); functional poolings inside it were not swapped"
    ]
    model = nn.Sequential(nn.MaxPool2d(2), UntraceableWithoutPooling(pools=False))
    report = swap_pooling(model, "max", input_size=(3, 8, 8))
    assert report.notes == [] and len(report.swapped) == 1


def test_the_no_pooling_warning_points_at_the_caller_not_into_surgery():
    """stacklevel=2: the warning names the line that called swap_pooling (here this file; under mutmut its
    trampoline, a frame in between, so only "not surgery.py itself" is asserted)."""
    with pytest.warns(UserWarning, match="no local pooling site") as record:
        swap_pooling(nn.Sequential(nn.Conv2d(3, 4, 3)), "ppool", input_size=(3, 8, 8))
    assert len(record) == 1 and Path(record[0].filename).name != "surgery.py"


def test_report_counts_swapped_and_left_sites():
    report = swap_pooling(CeilModeSites(), {"max": "max", "avg": None}, input_size=(3, 13, 13))
    assert (report.count(swapped=True), report.count(swapped=False), report.count()) == (2, 3, 5)
    assert (report.count("functional", swapped=True), report.count("module", "avg", swapped=False)) == (1, 1)


class UnbatchedCall(nn.Module):
    def forward(self, x):
        return F.max_pool2d(x[0], 2).unsqueeze(0)  # pools a (C, H, W) tensor


def test_the_channels_of_a_functional_site_fed_an_unbatched_tensor():
    """A 3-D input is (C, H, W): its channels are its first dimension (10 would be its height)."""
    report = swap_pooling(UnbatchedCall(), "max", input_size=(3, 10, 10))
    assert [(s.name, s.channels, s.swapped) for s in report.sites] == [("max_pool2d", 3, True)]


class CallsNoTraceFunction(nn.Module):
    """A forward that calls one of timm's no-trace functions (it branches on the shape), and pools."""

    def forward(self, x):  # the function must be a global of this module for torch.fx's autowrap
        x = resample_abs_pos_embed_nhwc(x.permute(0, 2, 3, 1), [8, 8]).permute(0, 3, 1, 2)
        return F.max_pool2d(x, 2)


def test_timm_no_trace_functions_do_not_hide_a_functional_site():
    """Traced through, the no-trace function fails the whole trace: the site would be lost (a note instead)."""
    model = CallsNoTraceFunction()
    x = torch.randn(1, 3, 8, 8)
    before = model(x)
    report = swap_pooling(model, "max", input_size=(3, 8, 8))
    assert [(s.name, s.swapped) for s in report.sites] == [("max_pool2d", True)] and report.notes == []
    assert torch.equal(model(x), before)
