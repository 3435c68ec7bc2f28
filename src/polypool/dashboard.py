"""Moved to :mod:`polypool.repro.dashboard` (the reproduction harness); this name keeps working: it is that module."""

import sys

from .repro import dashboard as _module

if __name__ == "__main__":  # python -m polypool.dashboard
    _main = _module.main()
    sys.exit(_main if isinstance(_main, int) else 0)
else:
    sys.modules[__name__] = _module
