"""Moved to :mod:`polypool.repro.quick` (the reproduction harness); this name keeps working: it is that module."""

import sys

from .repro import quick as _module

if __name__ == "__main__":  # python -m polypool.quick
    _main = _module.main()
    sys.exit(_main if isinstance(_main, int) else 0)
else:
    sys.modules[__name__] = _module
