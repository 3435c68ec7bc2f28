"""Reading a run record (:class:`~polypool.callbacks.RunRecord`'s JSON) back, checked: :func:`read_record` and the
error it raises, :class:`DamagedRecord`. The sweep's status and the table read records through these."""

from __future__ import annotations

import json
from pathlib import Path


class DamagedRecord(ValueError):
    """A run record that is there but cannot be used (truncated, not JSON, missing its IoU); ``path`` and ``why``
    say which and what is wrong, the message also says what to do."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = Path(path), why
        super().__init__(
            f"damaged run record {self.path} ({why}): move it aside (e.g. to {self.path.name}.damaged) "
            f"or delete it, and train the run again (reproduce.sh does both itself)"
        )


RECORD_KEYS = ("per_class_iou", "miou")


def read_record(path: Path, required: tuple[str, ...] = RECORD_KEYS) -> dict:
    """A run record written by :class:`RunRecord`, checked: it parses as a JSON object and has the ``required``
    keys (``per_class_iou``: a list of numbers or nulls; ``miou``: a number, or null). Raises :class:`DamagedRecord`
    naming the file, what is wrong and the fix. The table (``polypool.tables``) and the sweep's status
    (``polypool.sweep.inspect_run``) read records through this."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedRecord(path, f"cannot be read: {error}") from error
    if not text.strip():
        raise DamagedRecord(path, "empty file")
    try:
        record = json.loads(text)
    except ValueError as error:
        truncated = not text.rstrip().endswith(("}", "]"))  # RunRecord's JSON ends with its closing brace
        raise DamagedRecord(
            path,
            ("truncated, not valid JSON: " if truncated else "not valid JSON: ")
            + f"{getattr(error, 'msg', error)} at line {getattr(error, 'lineno', '?')} column "
            f"{getattr(error, 'colno', '?')}",
        ) from error
    if not isinstance(record, dict):
        raise DamagedRecord(path, f"a JSON {type(record).__name__}, not an object")
    missing = [key for key in required if key not in record]
    if missing:
        raise DamagedRecord(path, "no " + ", ".join(repr(key) for key in missing))
    per_class = record.get("per_class_iou")
    if "per_class_iou" in record and not (
        isinstance(per_class, list)
        and per_class
        and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in per_class)
    ):
        raise DamagedRecord(path, "'per_class_iou' is not a list of numbers")
    miou = record.get("miou")
    if miou is not None and (isinstance(miou, bool) or not isinstance(miou, (int, float))):
        raise DamagedRecord(path, "'miou' is not a number")
    return record
