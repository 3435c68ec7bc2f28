#!/usr/bin/env bash
# Reproduce a table of the paper: train every pooling variant, then regenerate the table from the logged runs.
#
#   ./reproduce.sh DATASET CONFIG [--quick] [--gpus N] [--seeds K] [--poolings a,b] [--out DIR] [-- overrides]
#
#   ./reproduce.sh voc vgg --quick       # a miniature run on the CPU with generated data (minutes)
#   ./reproduce.sh voc vgg --gpus 4      # supplementary Table 1, the authors' recipe (configs/voc/vgg.yaml)
#   ./reproduce.sh voc vgg_largefov --gpus 4   # Table 1 with DeepLab-LargeFOV's recipe
#   ./reproduce.sh voc resnet --gpus 4 --seeds 3 -- --trainer.max_steps 30000
#   ./reproduce.sh voc vgg --gpus 8 --gpus-per-run 1   # 8 runs side by side, one GPU each
#   ./reproduce.sh voc vgg --status      # one line per run and the table's completeness; starts nothing
#   ./reproduce.sh voc vgg --prefetch    # on a node with internet: the data and the pretrained weights, then exit
#   ./reproduce.sh voc vgg --slurm --gpus-per-run 1 --partition gpu --time 12:00:00   # one job per run (submitit)
#
# CONFIG names configs/DATASET/CONFIG.yaml; its runs, records, logs and W&B group are its own. Finished runs (their
# record exists) are skipped and interrupted ones resume from their last checkpoint, so the script can simply be
# run again. All options: ./reproduce.sh --help. The work is done by python -m polypool.sweep (src/polypool/repro/).
set -euo pipefail
cd "$(dirname "$0")"

if [ $# -lt 2 ] && [ "${1:-}" != -h ] && [ "${1:-}" != --help ]; then sed -n '2,19p' "$0"; exit 2; fi
make setup >/dev/null
exec .venv/bin/python -m polypool.sweep "$@"
