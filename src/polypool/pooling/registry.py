"""One entry point for every pooling of the paper's tables: ``build_pooling(name, kernel_size, ...)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Optional

from torch import nn

from .basic import avg_pool, max_pool
from .dpp import DetailPreservingPool2d
from .gated import GatedPool2d, MixedPool2d
from .geometry import IntOrPair, to_pair
from .lp import LearnedNormPool2d
from .ppool import PPool2d
from .strided_conv import StridedConvPool2d

POOLINGS: dict[str, Callable[..., nn.Module]] = {
    "max": max_pool,
    "avg": avg_pool,
    "strided_conv": StridedConvPool2d,
    "gated": GatedPool2d,
    "mixed": MixedPool2d,
    "dpp": DetailPreservingPool2d,
    "lp": LearnedNormPool2d,
    "ppool": PPool2d,
}
POOLING_NAMES = tuple(POOLINGS)
# The layers with learned parameters: their parameters get their own learning rate and no weight decay.
LEARNED_POOLING_TYPES = (
    StridedConvPool2d,
    GatedPool2d,
    MixedPool2d,
    DetailPreservingPool2d,
    LearnedNormPool2d,
    PPool2d,
)


def pooling_options(name: str) -> list[str]:
    """The keyword arguments that pooling ``name`` accepts beyond the window (for error messages and docs)."""
    params = inspect.signature(_factory(name)).parameters
    return [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]


def _factory(name: str) -> Callable[..., nn.Module]:
    if name not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; valid names: {', '.join(POOLING_NAMES)}")
    return POOLINGS[name]


def build_pooling(
    name: str,
    kernel_size: IntOrPair,
    stride: Optional[IntOrPair] = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    *,
    channels: Optional[int] = None,
    **kwargs,
) -> nn.Module:
    """Build pooling ``name`` with ``nn.MaxPool2d``'s window arguments; ``kwargs`` are the layer's own options.

    ``count_include_pad`` (from an average-pooling site) is passed on to the layers that have it (avg, gated,
    mixed, P-pooling, DPP, Lp: each a weighted mean over the window) and dropped for max pooling, which pads with
    -inf and counts no padding whatever the flag; Strided-C, a learned convolution in which
    "the padding not counted" has no meaning, raises for ``count_include_pad=False`` with non-zero padding, rather
    than silently changing the site's border behaviour.
    """
    factory = _factory(name)
    accepted = pooling_options(name)
    count_include_pad = kwargs.pop("count_include_pad", None)
    if count_include_pad is not None:
        if "count_include_pad" in accepted:
            kwargs["count_include_pad"] = count_include_pad
        elif name == "max":
            pass  # max pooling pads with -inf and never counts the padding: the flag means nothing to it
        elif not count_include_pad and to_pair(padding, "padding") != (0, 0):
            # Without padding the flag changes nothing (a ceil-mode overhang is never counted), so only padded
            # windows are a problem.
            raise ValueError(
                f"pooling {name!r} counts the zero padding in every window and cannot express "
                f"count_include_pad=False with padding={padding}; use 'avg', 'gated', 'mixed', 'ppool', "
                f"'dpp' or 'lp' there"
            )
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"pooling {name!r} got unexpected option(s) {unknown}; it accepts {accepted}")
    return factory(kernel_size, stride, padding, ceil_mode, channels=channels, **kwargs)


def is_learned_pooling(module: nn.Module) -> bool:
    return isinstance(module, LEARNED_POOLING_TYPES)


def pooling_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(qualified name, parameter) of every learned pooling layer in ``model``: alpha, gates, DPP, Lp, Strided-C."""
    for module_name, module in model.named_modules():
        if is_learned_pooling(module):
            for name, param in module.named_parameters():
                yield (f"{module_name}.{name}" if module_name else name), param
