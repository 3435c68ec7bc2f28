"""Swap every local 2-D pooling of a model (modules *and* functional calls) for a pooling of the registry.

    report = swap_pooling(model, "ppool", alpha_mode="channel")
    print(report)                     # a table of every site: what changed, what was left and why

What is a pooling site:

* ``nn.MaxPool2d`` / ``nn.AvgPool2d`` modules, timm's ``MaxPool2dSame`` / ``AvgPool2dSame`` included (their TF-"SAME"
  padding is kept: the new layer runs behind the same ``pad_same``);
* ``F.max_pool2d`` / ``F.avg_pool2d`` calls inside a module's ``forward`` (timm's inception_v3 blocks, ghostnet,
  ...). Each module whose own ``forward`` is not torch's is traced with torch.fx, its children kept as leaves and
  timm's no-trace functions autowrapped (the settings of timm's ``create_feature_extractor``). A call found there is
  rewritten into a call of a new child module, and the module's class is replaced by a subclass whose ``forward`` is
  the rewritten graph. The module object, its other children, its state dict keys and the model's ``feature_info``
  and ``forward_intermediates`` all stay: ``features_only`` models keep working.

Left alone, and listed in the report with the reason: global and adaptive pooling (``SelectAdaptivePool2d``,
``nn.Adaptive*Pool2d``, functional calls whose window comes from the input's shape), ``BlurPool2d``, strided
convolutions, and any functional call whose module could not be traced.

The number of channels at each site (which Strided-C, DPP and per-channel alpha need) comes from one dummy forward
pass, run in eval mode without gradients.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .pooling import build_pooling, pooling_options
from .pooling.registry import LEARNED_POOLING_TYPES

__all__ = ["PoolingSite", "SwapReport", "find_pooling_sites", "swap_pooling"]

PoolingChoice = Union[str, Mapping[str, Optional[str]]]

# Functional calls, matched by identity (F.max_pool2d is a boolean_dispatch wrapper: its name says nothing).
_FUNCTIONAL = {F.max_pool2d: "max", torch.max_pool2d: "max", F.avg_pool2d: "avg"}
_SIGNATURES = {  # the positional order of each functional's arguments after the input
    "max": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
}
_DEFAULTS = {
    "max": {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
    "avg": {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None},
}


def _timm_types(*names: str) -> tuple[type, ...]:
    """timm layer classes by name (absent ones are skipped, so older/newer timm versions both work)."""
    import timm.layers as layers
    import timm.layers.adaptive_avgmax_pool as adaptive_avgmax_pool
    import timm.layers.pool2d_same as pool2d_same

    # timm.layers does not export every pooling class (FastAdaptiveAvgMaxPool, AdaptiveCatAvgMaxPool2d, ...);
    # each name from the first module that has it (timm.layers re-exports most of them: no class twice)
    modules = (layers, pool2d_same, adaptive_avgmax_pool)
    found = (next((getattr(m, name) for m in modules if hasattr(m, name)), None) for name in names)
    return tuple(cls for cls in found if cls is not None)


def _left_alone_types() -> dict[type, str]:
    reasons = {
        nn.AdaptiveAvgPool2d: "adaptive pooling: not a local window",
        nn.AdaptiveMaxPool2d: "adaptive pooling: not a local window",
    }
    for cls in _timm_types(
        "SelectAdaptivePool2d",
        "AdaptiveAvgMaxPool2d",
        "AdaptiveCatAvgMaxPool2d",
        "FastAdaptiveAvgPool",
        "FastAdaptiveMaxPool",
        "FastAdaptiveAvgMaxPool",
    ):
        reasons[cls] = "global/adaptive pooling (classifier head): not a local window"
    for cls in _timm_types("BlurPool2d"):
        reasons[cls] = "anti-aliasing blur filter, not a pooling of the paper"
    return reasons


@dataclass
class PoolingSite:
    """One place in the model that pools, and what the swap did with it."""

    name: str  # qualified module name; for a functional call, the owning module's name + "." + the call's FX name
    source: str  # "module" or "functional"
    old: str  # "MaxPool2d", "MaxPool2dSame", "F.avg_pool2d", ...
    kind: Optional[str]  # "max" or "avg" for a local pooling, None for a site that is never swapped
    args: dict = field(default_factory=dict)  # kernel_size, stride, padding, ceil_mode, ... as at the site
    channels: Optional[int] = None
    new: Optional[str] = None
    swapped: bool = False
    reason: str = ""
    same_padding: bool = False  # timm's TF-"SAME" padding, applied before the pooling
    after_relu: Optional[bool] = None  # the dummy forward fed it a ReLU module's output (so it is never negative)

    def describe_args(self) -> str:
        short = {
            "kernel_size": "k",
            "stride": "s",
            "padding": "p",
            "dilation": "d",
            "ceil_mode": "ceil",
            "count_include_pad": "count_pad",
            "divisor_override": "divisor",
        }
        parts = [
            f"{short.get(k, k)}={_compact(v)}"
            for k, v in self.args.items()
            if not (k in ("dilation",) and _compact(v) == "1") and not (k == "divisor_override" and v is None)
        ]
        return ", ".join(parts) + (", SAME" if self.same_padding else "")


def _compact(value: Any) -> str:
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return str(value)


@dataclass
class SwapReport:
    """Every site of a swap: ``str(report)`` is a table, ``report.swapped`` the sites that changed."""

    sites: list[PoolingSite]
    pooling: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def swapped(self) -> list[PoolingSite]:
        return [s for s in self.sites if s.swapped]

    @property
    def left(self) -> list[PoolingSite]:
        return [s for s in self.sites if not s.swapped]

    @property
    def local_sites(self) -> list[PoolingSite]:
        """The local max/avg pooling sites (swapped or not)."""
        return [s for s in self.sites if s.kind is not None]

    def count(self, source: Optional[str] = None, kind: Optional[str] = None, swapped: Optional[bool] = None) -> int:
        return sum(
            1
            for s in self.local_sites
            if (source is None or s.source == source)
            and (kind is None or s.kind == kind)
            and (swapped is None or s.swapped == swapped)
        )

    def __str__(self) -> str:
        header = (
            f"swap_pooling({self.pooling!r}): {len(self.swapped)} of {len(self.local_sites)} local pooling "
            f"sites swapped ({self.count('module')} modules, {self.count('functional')} functional calls); "
            f"{len(self.sites) - len(self.local_sites)} other pooling-like layers left alone"
        )
        rows = [("site", "source", "old -> new", "arguments", "channels", "status")]
        for s in self.sites:
            status = "swapped" if s.swapped else f"left: {s.reason}"
            rows.append(
                (
                    s.name,
                    s.source,
                    f"{s.old} -> {s.new}" if s.swapped else s.old,
                    s.describe_args(),
                    "" if s.channels is None else str(s.channels),
                    status,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = [header, ""]
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  ------")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# --- finding the sites ---------------------------------------------------------------------------------------------


def _module_site(name: str, module: nn.Module) -> PoolingSite:
    same = isinstance(module, _timm_types("MaxPool2dSame", "AvgPool2dSame"))
    if isinstance(module, nn.MaxPool2d):
        args = {
            "kernel_size": module.kernel_size,
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "ceil_mode": module.ceil_mode,
        }
        if module.return_indices:
            return PoolingSite(
                name,
                "module",
                type(module).__name__,
                None,
                args,
                reason="returns indices (for unpooling): only max pooling can give them",
            )
        return PoolingSite(name, "module", type(module).__name__, "max", args, same_padding=same)
    args = {
        "kernel_size": module.kernel_size,
        "stride": module.stride,
        "padding": module.padding,
        "ceil_mode": module.ceil_mode,
        "count_include_pad": module.count_include_pad,
        "divisor_override": module.divisor_override,
    }
    return PoolingSite(name, "module", type(module).__name__, "avg", args, same_padding=same)


class _OwnerTracer(torch.fx.Tracer):
    """Traces one module's own forward: every child is a leaf; timm's no-trace functions are autowrapped."""

    def __init__(self, root: nn.Module):
        from timm.layers import get_notrace_functions

        super().__init__(autowrap_functions=tuple(f for f in get_notrace_functions() if callable(f)))
        self.owner = root

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return module is not self.owner


def _has_own_forward(module: nn.Module) -> bool:
    """Whether the module's forward is written outside torch.nn (only those can hide functional calls)."""
    forward = type(module).forward
    return not getattr(forward, "__module__", "").startswith("torch.")


def _trace(owner: nn.Module, training: bool) -> torch.fx.Graph:
    was_training = owner.training
    owner.training = training  # only the owner's own flag matters: its children are leaves
    try:
        return _OwnerTracer(owner).trace(owner)
    finally:
        owner.training = was_training


def _functional_args(node: torch.fx.Node, kind: str) -> tuple[dict, Optional[str]]:
    """The call's arguments by name, and a reason not to swap it (or None)."""
    names = _SIGNATURES[kind]
    args = dict(_DEFAULTS[kind])
    args.update(dict(zip(names, node.args[1:])))
    args.update({k: v for k, v in node.kwargs.items() if k != "input"})
    if "kernel_size" not in args:
        return args, "no kernel_size"
    dynamic = [
        k
        for k, v in args.items()
        if isinstance(v, torch.fx.Node)
        or (isinstance(v, (tuple, list)) and any(isinstance(e, torch.fx.Node) for e in v))
    ]
    if dynamic:
        return args, f"{', '.join(dynamic)} computed from the input (a global or shape-dependent pooling)"
    if args.get("return_indices"):
        return args, "returns indices (for unpooling)"
    if args["stride"] is None or args["stride"] == []:
        args["stride"] = args["kernel_size"]
    args.pop("return_indices", None)
    return args, None


@dataclass
class _Owner:
    """A module whose own forward calls a functional pooling, with both traced graphs."""

    name: str
    module: nn.Module
    graphs: dict  # training flag -> fx.Graph
    sites: dict  # fx node name -> PoolingSite


def _find(model: nn.Module) -> tuple[list[PoolingSite], list[_Owner], list[str]]:
    sites: list[PoolingSite] = []
    owners: list[_Owner] = []
    notes: list[str] = []
    left_alone = _left_alone_types()
    skip_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue  # inside a site already listed (the adaptive pool inside SelectAdaptivePool2d, ...)
        if isinstance(module, LEARNED_POOLING_TYPES):
            skip_prefixes.append(name + ".")
            continue  # one of ours, from an earlier swap
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            sites.append(_module_site(name, module))
            continue
        reason = next((r for cls, r in left_alone.items() if isinstance(module, cls)), None)
        if reason:
            sites.append(PoolingSite(name, "module", type(module).__name__, None, reason=reason))
            skip_prefixes.append(name + ".")
            continue
        if isinstance(module, nn.Conv2d) and max(module.stride) > 1:
            sites.append(
                PoolingSite(
                    name,
                    "module",
                    "Conv2d",
                    None,
                    {"kernel_size": module.kernel_size, "stride": module.stride},
                    reason="strided convolution: a learned layer, not a pooling",
                )
            )
            continue
        if _has_own_forward(module):
            owner = _trace_owner(name, module, notes)
            if owner is not None:
                owners.append(owner)
                sites.extend(owner.sites.values())
    return sites, owners, notes


def _trace_owner(name: str, module: nn.Module, notes: list[str]) -> Optional[_Owner]:
    try:
        graphs = {flag: _trace(module, flag) for flag in (True, False)}
    except Exception as error:
        source = ""
        try:
            source = inspect.getsource(type(module).forward)
        except (OSError, TypeError):
            pass
        if "pool2d" in source and "adaptive" not in source:
            notes.append(
                f"could not trace {name or 'the model'} ({type(module).__name__}: "
                f"{type(error).__name__}: {str(error)[:120]}); functional poolings inside it were not swapped"
            )
        return None
    sites = {}
    for graph in graphs.values():
        for node in graph.nodes:
            kind = _FUNCTIONAL.get(node.target) if node.op == "call_function" else None
            if kind is None or node.name in sites:
                continue
            args, reason = _functional_args(node, kind)
            old = "F.max_pool2d" if kind == "max" else "F.avg_pool2d"
            site_name = f"{name}.{node.name}" if name else node.name
            sites[node.name] = PoolingSite(
                site_name, "functional", old, None if reason else kind, args, reason=reason or ""
            )
    return _Owner(name, module, graphs, sites) if sites else None


def find_pooling_sites(model: nn.Module) -> list[PoolingSite]:
    """Every pooling site of ``model`` (nothing is changed; channels are not filled in)."""
    return _find(model)[0]


# --- swapping ------------------------------------------------------------------------------------------------------


class SamePadded(nn.Module):
    """Runs ``pool`` behind timm's TF-"SAME" padding, as ``MaxPool2dSame`` / ``AvgPool2dSame`` do."""

    def __init__(self, pool: nn.Module, kernel_size, stride, dilation=(1, 1), value: float = 0.0):
        super().__init__()
        self.pool = pool
        self.kernel_size, self.stride, self.dilation, self.value = kernel_size, stride, dilation, value

    def forward(self, x):
        from timm.layers.padding import pad_same

        return self.pool(pad_same(x, self.kernel_size, self.stride, self.dilation, value=self.value))

    def extra_repr(self) -> str:
        return (
            f"pad_same(kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, "
            f"value={self.value})"
        )


class _ChannelProbe(nn.Module):
    """Stands in for a functional call during the dummy forward: the same result, and it records the channels."""

    def __init__(self, fn: Callable, args: dict):
        super().__init__()
        self.fn, self.args, self.channels = fn, args, None

    def forward(self, x):
        self.channels = x.shape[1] if x.dim() == 4 else x.shape[0]
        return self.fn(x, **self.args)


def _resolve_target(pooling: PoolingChoice, kind: str) -> Optional[str]:
    if isinstance(pooling, str):
        return pooling
    unknown = set(pooling) - {"max", "avg"}
    if unknown:
        raise ValueError(f"a pooling mapping is keyed by the site kind, 'max' and/or 'avg'; got {sorted(unknown)}")
    return pooling.get(kind)


def _site_kwargs(site: PoolingSite, target: str) -> dict:
    """The site's window arguments as build_pooling wants them, or a clear error if the target can't express them."""
    args = dict(site.args)
    dilation = args.pop("dilation", 1)
    if _compact(dilation) != "1":
        if target != "max":
            raise ValueError(
                f"cannot swap {site.name} ({site.old}, {site.describe_args()}) to {target!r}: "
                f"only 'max' supports a dilated window"
            )
        args["dilation"] = dilation  # dropped, the window would silently shrink
    divisor = args.pop("divisor_override", None)
    if divisor is not None:
        if target != "avg":
            raise ValueError(
                f"cannot swap {site.name} ({site.old}, {site.describe_args()}) to {target!r}: "
                f"only 'avg' supports divisor_override"
            )
        args["divisor_override"] = divisor
    if site.same_padding:
        args["padding"] = 0  # SAME padding is applied before the pool
    count_include_pad = args.pop("count_include_pad", None)
    if count_include_pad is not None and (count_include_pad is False or "count_include_pad" in pooling_options(target)):
        args["count_include_pad"] = count_include_pad
    return args


def _build(site: PoolingSite, target: str, pooling_kwargs: dict) -> nn.Module:
    window = _site_kwargs(site, target)
    window.update(pooling_kwargs)
    kernel_size, stride = window.pop("kernel_size"), window.pop("stride")
    padding, ceil_mode = window.pop("padding", 0), window.pop("ceil_mode", False)
    try:
        layer = build_pooling(target, kernel_size, stride, padding, ceil_mode, channels=site.channels, **window)
    except (ValueError, TypeError) as error:
        hint = (
            ""
            if site.channels is not None
            else (
                " (the dummy forward never reached this site, so its channels "
                "are unknown: pass input_size=(C, H, W) that reaches it)"
            )
        )
        raise ValueError(
            f"cannot swap {site.name} ({site.old}, {site.describe_args()}) to {target!r}: {error}{hint}"
        ) from error
    if site.same_padding:
        value = float("-inf") if target == "max" else 0.0  # the -inf of MaxPool2dSame only makes sense for max
        layer = SamePadded(
            layer, site.args["kernel_size"], site.args["stride"], site.args.get("dilation", (1, 1)), value
        )
    return layer


def _attr_name(owner: nn.Module, node_name: str) -> str:
    name = f"polypool_{node_name}"
    if hasattr(owner, name) and not isinstance(getattr(owner, name), (_ChannelProbe, *LEARNED_POOLING_TYPES)):
        raise ValueError(f"{type(owner).__name__} already has an attribute {name!r}; cannot add the pooling layer")
    return name


def _rewrite_owner(owner: _Owner, targets: dict[str, str]) -> tuple[Callable[[], None], dict[int, tuple]]:
    """Route the owner's functional sites with a target through child modules (channel probes for now), and
    give the module a subclass whose forward is the rewritten graph.

    Returns the undo, and for each rewritten site (by ``id``) the ``(module, attribute)`` of its child module.
    """
    module = owner.module
    original_class = module.__class__
    added = []
    slots = {}
    forwards = {}
    for flag, graph in owner.graphs.items():
        for node in list(graph.nodes):
            site = owner.sites.get(node.name)
            if node.op != "call_function" or site is None or node.name not in targets:
                continue
            attr = _attr_name(module, node.name)
            if not hasattr(module, attr):
                module.add_module(attr, _ChannelProbe(node.target, dict(site.args)))
                added.append(attr)
                slots[id(site)] = (module, attr)
            with graph.inserting_after(node):
                # the input, also when passed by keyword (F.avg_pool2d(input=x, ...) keeps it in the node's kwargs)
                replacement = graph.call_module(attr, (node.args[0] if node.args else node.kwargs["input"],))
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
        graph.lint()
        forwards[flag] = type(torch.fx.GraphModule(module, graph)).forward
    train_fn, eval_fn = forwards[True], forwards[False]
    if inspect.getsource(train_fn) == inspect.getsource(eval_fn):
        forward = train_fn
    else:  # the forward branches on self.training: keep both graphs

        def forward(self, *args, **kwargs):
            return (train_fn if self.training else eval_fn)(self, *args, **kwargs)

    module.__class__ = type(
        original_class.__name__,
        (original_class,),
        {
            "forward": forward,
            "__module__": original_class.__module__,
            "__qualname__": original_class.__qualname__,
            "_polypool_rewritten": True,
        },
    )

    def undo():
        module.__class__ = original_class
        for attr in added:
            delattr(module, attr)

    return undo, slots


def _dummy_input(model: nn.Module, input_size: Optional[tuple]) -> torch.Tensor:
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        input_size = tuple(cfg.get("input_size", (3, 224, 224)))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.rand(1, *input_size, device=device, dtype=dtype)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def swap_pooling(
    model: nn.Module,
    pooling: PoolingChoice,
    *,
    input_size: Optional[tuple] = None,
    kind_kwargs: Optional[Mapping[str, dict]] = None,
    **pooling_kwargs,
) -> SwapReport:
    """Replace every local max/avg pooling of ``model``, in place, with pooling ``pooling`` of the registry.

    Args:
        model: any ``nn.Module``; timm models, ``features_only`` ones included.
        pooling: a registry name (``"ppool"``, ``"max"``, ``"dpp"``, ...) for every site, or a mapping by site kind,
            e.g. ``{"max": "ppool", "avg": None}`` to swap only the max pools (None leaves that kind alone).
        input_size: ``(C, H, W)`` of the dummy forward that finds each site's channels; default: the model's
            ``pretrained_cfg["input_size"]``, else ``(3, 224, 224)``.
        kind_kwargs: extra options per site kind, e.g. ``{"avg": {"alpha_init": 0.0}}`` to start P-pooling at the
            average-pooling sites as average pooling.
        **pooling_kwargs: options of the new layers (``alpha_mode``, ``alpha_init``, ...), for every site.

    Each site's kernel, stride, padding, ceil_mode and count_include_pad carry over (a target that cannot express
    one raises a ValueError naming the site, and the model is left as it was). A model without local pooling gets a
    report that says so, with a warning.
    """
    sites, owners, notes = _find(model)
    report = SwapReport(sites, pooling, notes)
    targets = {id(s): _resolve_target(pooling, s.kind) for s in sites if s.kind is not None}
    for site in sites:
        if site.kind is not None and targets[id(site)] is None:
            site.reason = f"{site.kind} sites are not swapped (pooling={pooling!r})"
    undo: list[Callable[[], None]] = []
    slots: dict[int, tuple] = {}  # functional site -> (owning module, attribute of its child module)
    relu_outputs: dict[int, torch.Tensor] = {}  # the dummy forward's ReLU outputs, kept alive so ids stay unique

    def see_input(site: PoolingSite, x: torch.Tensor) -> None:  # is the site's input a ReLU module's output?
        site.after_relu = site.after_relu is not False and relu_outputs.get(id(x)) is x

    def see_module_site(site: PoolingSite, x: torch.Tensor) -> None:
        site.channels = x.shape[-3]
        see_input(site, x)

    try:
        hooks = []
        for site in sites:  # module sites: record channels with forward hooks
            if site.source == "module" and site.kind is not None:
                module = model.get_submodule(site.name)
                hooks.append(
                    module.register_forward_hook(
                        lambda mod, inputs, output, site=site: see_module_site(site, inputs[0])
                    )
                )
        for owner in owners:
            chosen = {n: targets[id(s)] for n, s in owner.sites.items() if s.kind is not None and targets[id(s)]}
            if chosen:
                undo_owner, owner_slots = _rewrite_owner(owner, chosen)
                undo.append(undo_owner)
                slots.update(owner_slots)
        for site in sites:  # functional sites: their probes see the input
            if id(site) in slots:
                hooks.append(
                    getattr(*slots[id(site)]).register_forward_hook(
                        lambda mod, inputs, output, site=site: see_input(site, inputs[0])
                    )
                )
        if any(s.kind is not None for s in sites):
            was_training = model.training
            model.eval()
            hooks += [
                m.register_forward_hook(lambda mod, inputs, output: relu_outputs.setdefault(id(output), output))
                for m in model.modules()
                if isinstance(m, (nn.ReLU, nn.ReLU6))
            ]
            try:
                with torch.no_grad():
                    model(_dummy_input(model, input_size))
            finally:
                model.train(was_training)
                for hook in hooks:
                    hook.remove()
                relu_outputs.clear()
        for site in sites:  # functional sites: the probes saw the channels
            if id(site) in slots:
                owner_module, attr = slots[id(site)]
                site.channels = getattr(owner_module, attr).channels
        # Build every new layer before changing anything, so that an error leaves the model as it was.
        new_layers = []
        for site in sites:
            target = targets.get(id(site))
            if site.kind is not None and target is not None:
                kwargs = dict(pooling_kwargs, **(kind_kwargs or {}).get(site.kind, {}))
                new_layers.append((site, target, _build(site, target, kwargs)))
    except BaseException:
        for action in reversed(undo):
            action()
        raise
    for site, _target, layer in new_layers:
        if site.after_relu and hasattr(layer, "input_nonnegative"):  # P-pooling skips its negative check (a sync)
            layer.input_nonnegative = True
        if site.source == "module":
            _set_module(model, site.name, layer)
        else:
            setattr(*slots[id(site)], layer)
        site.new, site.swapped, site.reason = type(layer).__name__, True, ""
        if isinstance(layer, SamePadded):
            site.new = f"SamePadded({type(layer.pool).__name__})"
    if not report.local_sites:
        warnings.warn(
            f"swap_pooling: {type(model).__name__} has no local pooling site (0 swapped); "
            f"global/adaptive pooling and strided convolutions are left alone by design",
            UserWarning,
            stacklevel=2,
        )
    return report
