"""Moved to :mod:`polypool.repro.stopping` (the reproduction harness); this name keeps working: it is that module."""

import sys

from .repro import stopping as _module

sys.modules[__name__] = _module
