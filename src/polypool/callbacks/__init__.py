"""Callbacks of the reproduction, one per module as in ``lightning.pytorch.callbacks``:

* :class:`RunRecord` (:mod:`.run_record`): one machine-readable record per finished run, at :func:`record_file`'s
  path (``<root>/<dataset>/<experiment>/<pooling>/<seed>.json``), with the final evaluation's numbers
  (:func:`final_evaluation`, :mod:`.evaluation`);
* :class:`AlphaHistory` (:mod:`.alpha_history`): the learned alpha over training;
* :class:`QualitativePanel` (:mod:`.qualitative_panel`): image | truth | prediction panels to W&B;
* :class:`RNGState` (:mod:`.rng_state`): the global random generators in the checkpoint;
* :class:`TimedLastCheckpoint` (:mod:`.timed_last_checkpoint`) and :class:`SignalCheckpoint`
  (:mod:`.signal_checkpoint`): ``last.ckpt`` on a time interval, and when a scheduler stops the run.

Helpers they share: :mod:`.files` (atomic writes, :class:`NoSpaceError`), :mod:`.records` (:func:`read_record`,
:class:`DamagedRecord`), :mod:`.alpha` (alpha's maps and statistics). Every name is importable from
``polypool.callbacks`` itself.
"""

from .alpha import alpha_maps, alpha_summary, log_dense_alpha_histograms
from .alpha_history import AlphaHistory, load_alpha_history
from .evaluation import final_evaluation, send_evaluation_to_wandb
from .files import NO_SPACE_ERRNOS, NoSpaceError, atomic_write_text, format_bytes, free_bytes, temporary_name
from .qualitative_panel import QualitativePanel, make_panel
from .records import RECORD_KEYS, DamagedRecord, read_record
from .rng_state import RNGState
from .run_record import (
    DEFAULT_RECORDS_ROOT,
    RunRecord,
    backbone_family,
    config_hash,
    git_commit,
    nan_to_none,
    record_file,
)
from .signal_checkpoint import SignalCheckpoint
from .timed_last_checkpoint import TimedLastCheckpoint

__all__ = [
    "DEFAULT_RECORDS_ROOT",
    "NO_SPACE_ERRNOS",
    "RECORD_KEYS",
    "AlphaHistory",
    "DamagedRecord",
    "NoSpaceError",
    "QualitativePanel",
    "RNGState",
    "RunRecord",
    "SignalCheckpoint",
    "TimedLastCheckpoint",
    "alpha_maps",
    "alpha_summary",
    "atomic_write_text",
    "backbone_family",
    "config_hash",
    "final_evaluation",
    "format_bytes",
    "free_bytes",
    "git_commit",
    "load_alpha_history",
    "log_dense_alpha_histograms",
    "make_panel",
    "nan_to_none",
    "read_record",
    "record_file",
    "send_evaluation_to_wandb",
    "temporary_name",
]
