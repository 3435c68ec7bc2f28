"""Moved to :mod:`polypool.repro.notebooks` (the reproduction harness); this name keeps working: it is that module."""

import sys

from .repro import notebooks as _module

sys.modules[__name__] = _module
