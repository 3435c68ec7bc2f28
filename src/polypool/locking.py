"""Moved to :mod:`polypool.repro.locking` (the reproduction harness); this name keeps working: it is that module."""

import sys

from .repro import locking as _module

sys.modules[__name__] = _module
