"""The W&B dashboard of a table's runs, built with W&B's own UI library (``wandb-workspaces``).

    python -m polypool.dashboard ENTITY/PROJECT --dataset voc --config vgg            # creates it, prints its URL
    python -m polypool.dashboard ENTITY/PROJECT --dataset voc --config vgg --quick    # the CPU miniature's runs
    python -m polypool.dashboard ENTITY/PROJECT --dataset voc --config vgg --url URL  # updates that dashboard
    python -m polypool.dashboard ENTITY/PROJECT --dataset voc --config vgg --dry-run  # prints it; no W&B needed

The runs are those of one table: the W&B group ``<dataset>/<config>`` (``configs/<dataset>/<config>.yaml``'s runs,
which is also what ``python -m polypool.tables --wandb ENTITY/PROJECT --dataset D --backbone C`` reads), grouped by
their pooling (``config.model.pooling``): every curve and bar is the mean over a pooling's seeds, with its range.
The workspace's sections, top to bottom:

1. **mIoU**: val mIoU over training (periodic validation), the final whole-val mIoU (the table's number) and the
   train/val losses.
2. **Boundary IoU and trimap**: the final Boundary IoU, and the final trimap mIoU at every band width.
3. **alpha per P-pooling layer**: for each P-pooling layer of the config's network, alpha's mean, min and max over
   training, and the distribution of dense alpha over the run's fixed probe image (a histogram per validation and
   at the end; a channel alpha's per-channel histogram).
4. **alpha maps and panels**: the dense alpha maps and the image | ground truth | prediction panels, by step.
5. **Runs and provenance**: a run comparer of the runs' configs (provenance included); the runs table beside the
   panels shows each run's pooling, seed, final mIoU and Boundary IoU and its provenance (polypool version, git
   commit and uncommitted-changes flag, torch, CUDA, accelerator, device, precision).

Every key it plots is a :mod:`polypool.wandb_keys` key, the module the logging code and the table's W&B reader take
their keys from. The P-pooling layers' names are those of the config's network (built without weights on the meta
device), or ``--layers``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from .. import wandb_keys as keys
from . import spec

ALPHA_SECTION = "alpha per P-pooling layer"
# the runs table's provenance columns: the W&B run config's "provenance" (cli.wandb_run_info) and the trainer's
PROVENANCE_COLUMNS = (
    *tuple(
        f"{keys.PROVENANCE_CONFIG}.{part}"
        for part in (
            "software.polypool",
            "software.git_commit",
            "software.git_dirty",
            "software.torch",
            "software.cuda",
            "software.lightning",
            "software.timm",
            "hardware.accelerator",
            "hardware.device_name",
            "hardware.devices_per_node",
            "hardware.host",
        )
    ),
    "trainer.precision",
    "trainer.num_nodes",
)


class DashboardError(RuntimeError):
    """The dashboard could not be created or updated; the message names the project, the cause and the fix."""


def config_column(dotted: str) -> str:
    """The runs table's column of a (nested) config value: ``model.pooling`` -> ``config:model.value.pooling``
    (W&B keeps each top-level config key's value under ``value``)."""
    first, _, rest = dotted.partition(".")
    return f"config:{first}.value" + (f".{rest}" if rest else "")


def summary_column(key: str) -> str:
    return f"summary:{key}"


def pooling_layers(model: Any) -> dict[str, str]:
    """``{layer name: alpha mode}`` of every P-pooling layer of a :class:`SegmentationModel`'s backbone (the names
    of its ``alpha/<layer>/...`` keys)."""
    from ..pooling import PPool2d

    return {
        name: module.alpha_mode
        for name, module in model.network.backbone.named_modules()
        if isinstance(module, PPool2d)
    }


def config_files(dataset: str, config: str, quick: bool = False, repo: Path = Path(".")) -> list[Path]:
    """``configs/<dataset>/<config>.yaml`` (and the quick preset after it) in the repository ``repo`` (default: the
    current directory)."""
    path = spec.config_file(dataset, config, repo)
    if not path.is_file():
        known = sorted(
            f"{p.parent.name}/{p.stem}"
            for p in (Path(repo) / spec.CONFIGS).glob("*/*.yaml")
            if p.parent.name != "trainer"
        )
        raise DashboardError(
            f"no config {spec.config_file(dataset, config)}: --dataset/--config name one of {', '.join(known)}"
        )
    return [path] + ([Path(repo) / spec.QUICK_PRESET] if quick else [])


def config_layers(files: Sequence[Path]) -> dict[str, str]:
    """The P-pooling layers (:func:`pooling_layers`) of the network the config files build with ``pooling: ppool``
    (their ``model`` sections merged in order), without weights, on the meta device (no memory, no time)."""
    import torch
    import yaml

    from ..models import SegmentationModel

    model_args: dict[str, Any] = {}
    for file in files:
        model_args.update((yaml.safe_load(Path(file).read_text()) or {}).get("model") or {})
    model_args.update(pretrained=False, weights=None, network_weights=None, pooling="ppool")
    try:
        with torch.device("meta"):
            model = SegmentationModel(**model_args)
    except (RuntimeError, NotImplementedError, ValueError):  # an operation the meta device lacks: build it for real
        model = SegmentationModel(**model_args)
    return pooling_layers(model)


def dashboard(
    entity: str,
    project: str,
    dataset: str,
    experiment: str,
    layers: Mapping[str, str],
    trimap_widths: Sequence[int] = keys.TRIMAP_WIDTHS,
    name: Optional[str] = None,
):
    """The W&B workspace (``wandb_workspaces.workspaces.Workspace``) of the runs of group ``<dataset>/<experiment>``
    in ``entity/project``, grouped by pooling; ``layers``: ``{P-pooling layer name: alpha mode}`` of the config's
    network (:func:`config_layers`). Pure: it builds the specification and contacts nothing (``save()`` does)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    seeds = {"groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}  # a pooling's seeds: their mean and range
    bars = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stddev", "orientation": "v"}
    line = {"x": keys.STEP, **seeds}
    miou = ws.Section(
        name="mIoU",
        is_open=True,
        panels=[
            wr.LinePlot(
                title="val mIoU over training (periodic validation; the --quick preset has none)",
                y=[keys.VAL_MIOU],
                **line,
            ),
            wr.BarPlot(title="final mIoU, whole val set (the table's number)", metrics=[keys.FINAL_MIOU], **bars),
            wr.LinePlot(title="loss", y=[keys.TRAIN_LOSS, keys.VAL_LOSS], **line),
        ],
    )
    detail = ws.Section(
        name="Boundary IoU and trimap",
        is_open=True,
        panels=[
            wr.BarPlot(
                title="final Boundary IoU (d = 2% of the image diagonal)", metrics=[keys.FINAL_BOUNDARY_MIOU], **bars
            ),
            wr.BarPlot(
                title="final trimap mIoU by band width (narrow band: the pixels next to a boundary)",
                metrics=[keys.final_trimap_miou(w) for w in trimap_widths],
                **bars,
            ),
        ],
    )
    alpha_panels = []
    for layer, mode in layers.items():
        alpha_panels.append(
            wr.LinePlot(
                title=f"alpha {layer} ({mode}): mean, min, max",
                y=[keys.alpha_stat(layer, s) for s in keys.ALPHA_STATS],
                **line,
            )
        )
        histogram = keys.alpha_histogram_key(layer, mode)
        if histogram:
            what = "over the probe image" if mode == "dense" else "over the channels"
            alpha_panels.append(wr.LinePlot(title=f"alpha {layer}: distribution {what}", x=keys.STEP, y=[histogram]))
    alpha = ws.Section(
        name=ALPHA_SECTION,
        is_open=True,
        panels=alpha_panels,
        layout_settings=ws.SectionLayoutSettings(columns=2, rows=max(len(layers), 1)),
    )
    media_panels = []
    dense = [keys.alpha_map(layer) for layer, mode in layers.items() if mode == "dense"]
    if dense:
        media_panels.append(
            wr.MediaBrowser(
                title="dense alpha maps of a val image (mean over channels; the alpha range black to white)",
                media_keys=dense,
                gallery_axis="step",
            )
        )
    media_panels.append(
        wr.MediaBrowser(title="image | ground truth | prediction", media_keys=[keys.PANEL], gallery_axis="step")
    )
    media = ws.Section(name="alpha maps and panels", is_open=True, panels=media_panels)
    runs = ws.Section(
        name="Runs and provenance",
        is_open=True,
        panels=[wr.RunComparer(diff_only="split", layout=wr.Layout(w=24, h=12))],
    )
    columns = [
        config_column(keys.POOLING_CONFIG),
        config_column(keys.SEED_CONFIG),
        summary_column(keys.FINAL_MIOU),
        summary_column(keys.FINAL_BOUNDARY_MIOU),
    ] + [config_column(c) for c in PROVENANCE_COLUMNS]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name or f"polypool {keys.group(dataset, experiment)}",
        sections=[miou, detail, alpha, media, runs],
        settings=ws.WorkspaceSettings(x_axis=keys.STEP, max_runs=100),
        runset_settings=ws.RunsetSettings(
            filters=[ws.Metric("Group") == keys.group(dataset, experiment)],
            groupby=[ws.Config(keys.POOLING_CONFIG)],
            pinned_columns=columns,
        ),
    )


def panels(workspace) -> list[tuple[str, Any]]:
    """``(section name, panel)`` of every panel of ``workspace``."""
    return [(section.name, panel) for section in workspace.sections for panel in section.panels]


def panel_keys(panel: Any) -> list[str]:
    """The logged keys a panel plots: a line plot's x and y, a bar plot's metrics, a media browser's media keys
    (W&B's own axes, such as ``Step``, left out)."""
    found: list[Any] = []
    for attribute in ("y", "metrics", "media_keys"):
        found += list(getattr(panel, attribute, None) or [])
    x = getattr(panel, "x", None)
    if x and x != "Step":
        found.append(x)
    return [str(getattr(key, "name", key)) for key in found]


def plotted_keys(workspace) -> set[str]:
    """Every logged key the workspace's panels plot."""
    return {key for _, panel in panels(workspace) for key in panel_keys(panel)}


def describe(workspace) -> str:
    """The workspace in words: its runs, and each section's panels with the keys they plot."""
    settings = workspace.runset_settings
    lines = [
        f"W&B workspace {workspace.name!r} of {workspace.entity}/{workspace.project}",
        f"runs: {settings.filters}, grouped by {', '.join(repr(g) for g in settings.groupby)}",
        f"runs table columns: {', '.join(settings.pinned_columns)}",
    ]
    for section in workspace.sections:
        lines.append(f"[{section.name}]")
        for panel in section.panels:
            title = getattr(panel, "title", None) or type(panel).__name__
            shown = panel_keys(panel)
            lines.append(f"  {type(panel).__name__}: {title}" + (f" <- {', '.join(shown)}" if shown else ""))
    return "\n".join(lines)


def unreachable(url: str, timeout: float = 10.0) -> Optional[str]:
    """None if ``url``'s server answers (any HTTP status), else why not."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as error:
        return f"{type(error).__name__}: {getattr(error, 'reason', error)}"
    return None


def save(workspace, url: Optional[str] = None) -> str:
    """Creates the workspace in W&B (or, with ``url``, updates the workspace there with its sections and runs) and
    returns its URL. Raises :class:`DashboardError` naming the project, the cause and the fix when no API key is set
    or W&B cannot be reached or refuses the request."""
    import wandb
    import wandb_workspaces.workspaces as ws

    where = f"{workspace.entity}/{workspace.project}"
    host = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    what = f"cannot {'update' if url else 'create'} the W&B dashboard of {where}"
    offline = "(--dry-run prints the dashboard without W&B)"
    problem = unreachable(host)  # one quick try: W&B's own client retries an unreachable server for minutes
    if problem:
        raise DashboardError(
            f"{what}: W&B at {host} could not be reached ({problem}). Check the network (and "
            f"WANDB_BASE_URL, for a W&B server of your own), then run this command again {offline}"
        )
    try:
        wandb.Api()  # the API key and the server, checked before anything else
        target = workspace
        if url:
            target = ws.Workspace.from_url(url)
            for field in ("name", "sections", "settings", "runset_settings"):
                setattr(target, field, getattr(workspace, field))
        target.save()
        return target.url
    except wandb.errors.UsageError as error:
        raise DashboardError(
            f"{what}: no W&B API key is set ({error}). Run `wandb login` (or set WANDB_API_KEY), "
            f"then run this command again {offline}"
        ) from error
    except wandb.errors.CommError as error:  # AuthenticationError too: an unreachable server or a refused key
        raise DashboardError(
            f"{what}: W&B at {host} could not be reached or did not accept the API key ({error}). "
            f"Check the network (and WANDB_BASE_URL, for a W&B server of your own) and the key "
            f"(`wandb login --relogin`), then run this command again {offline}"
        ) from error
    except Exception as error:
        raise DashboardError(
            f"{what}: W&B at {host} did not save it ({type(error).__name__}: {error}). Check that "
            f"the project exists and that your API key may write to it"
            + (" and that the URL is a workspace of it" if url else "")
            + f", then run this command again {offline}"
        ) from error


def parse_layers(values: Sequence[str]) -> dict[str, str]:
    """``NAME`` (dense alpha) or ``NAME:MODE`` -> ``{name: mode}``."""
    layers = {}
    for value in values:
        name, _, mode = value.partition(":")
        if mode not in ("", "dense", "channel", "layer"):
            raise DashboardError(f"--layers {value}: the alpha mode after ':' is dense, channel or layer")
        layers[name] = mode or "dense"
    return layers


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="ENTITY/PROJECT", help="the W&B project the runs log to (--wandb_project)")
    parser.add_argument("--dataset", default="voc")
    parser.add_argument(
        "--config",
        default="vgg",
        help="the config (experiment) whose runs to show: vgg, vgg_largefov, resnet, ... (the W&B "
        "group <dataset>/<config>, as python -m polypool.tables --backbone)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="runs of reproduce.sh --quick (configs/trainer/quick.yaml's network: its layer names)",
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        metavar="NAME[:MODE]",
        help="the P-pooling layers to plot alpha of (default: those of the config's network)",
    )
    parser.add_argument("--name", help="the workspace's name (default: 'polypool <dataset>/<config>')")
    parser.add_argument("--url", help="update this workspace (a URL this command printed) instead of creating one")
    parser.add_argument("--dry-run", action="store_true", help="print the dashboard's sections and keys; no W&B")
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path("."),
        help="the repository whose configs/ name the layers (default: the current directory)",
    )
    args = parser.parse_args(argv)
    try:
        entity, _, project = args.path.partition("/")
        if not entity or not project or "/" in project:
            raise DashboardError(f"{args.path!r} is not ENTITY/PROJECT (e.g. my-team/polypool)")
        layers = (
            parse_layers(args.layers)
            if args.layers
            else config_layers(config_files(args.dataset, args.config, args.quick, args.repo))
        )
        name = args.name or f"polypool {keys.group(args.dataset, args.config)}" + (" (quick)" if args.quick else "")
        workspace = dashboard(entity, project, args.dataset, args.config, layers, name=name)
        if args.dry_run:
            text = describe(workspace)
        else:
            text = f"W&B dashboard of {keys.group(args.dataset, args.config)}: {save(workspace, args.url)}"
    except DashboardError as error:
        print(f"polypool.dashboard: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
