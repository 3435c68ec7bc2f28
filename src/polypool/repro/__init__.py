"""The reproduction harness: the runs of the paper's tables, apart from the library (:mod:`polypool`).

* :mod:`~polypool.repro.spec`: the one owner of the table's rows, the run paths, the fit command and ``sweep.json``;
* :mod:`~polypool.repro.runs` and :mod:`~polypool.repro.status`: a run, and what it is now (liveness probes);
* :mod:`~polypool.repro.config`: reproduce.sh's arguments and the config, read by LightningCLI's own parser;
* :mod:`~polypool.repro.preflight`: the node's checks (GPUs and CUDA builds, weight caches, the data);
* :mod:`~polypool.repro.local` and :mod:`~polypool.repro.slurm`: runs on this node, or as a SLURM job array;
* :mod:`~polypool.repro.sweep`: the orchestration (``reproduce.sh`` = ``python -m polypool.sweep``);
* :mod:`~polypool.repro.quick`, :mod:`~polypool.repro.tables`, :mod:`~polypool.repro.notebooks`,
  :mod:`~polypool.repro.dashboard`: the CPU miniature, the tables, the notebooks' helpers, the W&B dashboard;
* :mod:`~polypool.repro.stopping` and :mod:`~polypool.repro.locking`: signals and folder locks of the harness.

Nothing here looks for a checkout: the repository (its ``configs/``) is an argument (``--repo``), the current
directory by default. The old names (``polypool.sweep``, ``polypool.quick``, ``polypool.tables``,
``polypool.notebook_support``, ``polypool.dashboard``, ``polypool.stopping``, ``polypool.locking``) are these modules.
"""
