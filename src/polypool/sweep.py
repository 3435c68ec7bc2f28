"""Moved to :mod:`polypool.repro.sweep` (the reproduction harness); this name keeps working: it is that module."""

import sys

from .repro import sweep as _module

if __name__ == "__main__":  # python -m polypool.sweep
    _main = _module.main()
    sys.exit(_main if isinstance(_main, int) else 0)
else:
    sys.modules[__name__] = _module
