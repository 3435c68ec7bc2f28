#!/usr/bin/env bash
# Reproduce a table of the paper: train every pooling variant, then regenerate the table from the logged runs.
#
#   ./reproduce.sh DATASET CONFIG [--quick] [--gpus N] [--seeds K] [--poolings a,b] [--out DIR] [-- overrides]
#
#   ./reproduce.sh voc vgg --quick       # a miniature run on the CPU with generated data (minutes)
#   ./reproduce.sh voc vgg --gpus 4      # supplementary Table 1, the authors' recipe (configs/voc/vgg.yaml)
#   ./reproduce.sh voc vgg_largefov --gpus 4   # Table 1 with DeepLab-LargeFOV's recipe
#   ./reproduce.sh voc resnet --gpus 4 --seeds 3 -- --trainer.max_steps 30000
#
# CONFIG names configs/DATASET/CONFIG.yaml; its runs, records, logs and W&B group are its own. Finished runs (their
# record exists) are skipped and interrupted ones resume from their last checkpoint, so the script can simply be
# run again.
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,14p' "$0"; exit "${1:-0}"; }
[ $# -ge 2 ] || usage 2
DATASET=$1 CONFIG_NAME=$2
shift 2
QUICK=0 GPUS=0 SEEDS=1 OUT_DIR="" EXTRA=() ONLY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --gpus) GPUS=$2; shift ;;
    --seeds) SEEDS=$2; shift ;;
    --poolings) IFS=, read -r -a ONLY <<< "$2"; shift ;;
    --out) OUT_DIR=$2; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage 0 ;;
    *) echo "reproduce.sh: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done

CONFIG=configs/$DATASET/$CONFIG_NAME.yaml
if [ ! -f "$CONFIG" ]; then
  HAVE=()
  for C in configs/*/*.yaml; do [[ $C == configs/trainer/* ]] || HAVE+=("${C#configs/}"); done
  echo "reproduce.sh: no config $CONFIG (have: ${HAVE[*]})" >&2; exit 2
fi
POOLINGS=(max avg strided_conv gated dpp ppool)   # the rows of the supplement's tables
if [ ${#ONLY[@]} -gt 0 ]; then
  for P in "${ONLY[@]}"; do
    case " ${POOLINGS[*]} " in *" $P "*) ;; *) echo "reproduce.sh: --poolings: unknown row '$P' (rows: ${POOLINGS[*]})" >&2; exit 2 ;; esac
  done
  POOLINGS=("${ONLY[@]}")
fi

make setup >/dev/null
PY=.venv/bin/python
START=$(date +%s)

if [ "$QUICK" = 1 ]; then
  [ "$DATASET" = voc ] || { echo "reproduce.sh: --quick generates a mini VOC set; use it with 'voc'" >&2; exit 2; }
  OUT=${OUT_DIR:-results/quick}
  DATA=$([ -n "$OUT_DIR" ] && echo "$OUT_DIR/data/voc" || echo data/quick/voc)
  if [ ! -d "$DATA/VOCdevkit" ]; then
    $PY -m polypool.data.fixtures voc "$DATA" --train 64 --val 16 --seed 0
  fi
  ARGS=(--config "$CONFIG" --config configs/trainer/quick.yaml --data.init_args.root "$DATA")
  NOTE=(--quick)
else
  OUT=${OUT_DIR:-results}
  # The data root and download flag as the run will see them: the config's, unless an override after -- says
  # otherwise. A download happens here, once, before any (DDP) training process starts.
  read -r ROOT DOWNLOAD TRAIN_SPLIT < <($PY - "$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"} <<'PYEOF'
import sys, yaml
init = yaml.safe_load(open(sys.argv[1]))["data"]["init_args"]
values = {"root": str(init["root"]), "download": str(init.get("download", False)).lower(),
          "train_split": str(init.get("train_split", "train"))}
args = sys.argv[2:]
for i, arg in enumerate(args):
    for key in values:
        flag = f"--data.init_args.{key}"
        if arg == flag and i + 1 < len(args):
            values[key] = args[i + 1]
        elif arg.startswith(flag + "="):
            values[key] = arg.split("=", 1)[1]
print(values["root"], values["download"].lower(), values["train_split"])
PYEOF
)
  if [ "$DOWNLOAD" = true ]; then
    $PY -m polypool.data.download "$DATASET" "$ROOT" --train-split "$TRAIN_SPLIT" || exit 1
  fi
  [ -d "$ROOT" ] || { echo "reproduce.sh: no data at $ROOT. See README.md, 'Data' (or pass -- --data.init_args.root DIR, or -- --data.init_args.download true)." >&2; exit 1; }
  ARGS=(--config "$CONFIG")
  if [ "$GPUS" -gt 1 ]; then ARGS+=(--config configs/trainer/ddp.yaml --trainer.devices "$GPUS");
  elif [ "$GPUS" = 1 ]; then ARGS+=(--config configs/trainer/gpu.yaml);
  else ARGS+=(--config configs/trainer/cpu.yaml); fi
  NOTE=()
fi

RUNS=$OUT/runs
for POOLING in "${POOLINGS[@]}"; do
  for ((SEED = 0; SEED < SEEDS; SEED++)); do
    RECORD=$RUNS/$DATASET/$CONFIG_NAME/$POOLING/$SEED.json
    if [ -f "$RECORD" ]; then echo "== $POOLING seed $SEED: done ($RECORD)"; continue; fi
    LOGDIR=$OUT/logs/$DATASET/$CONFIG_NAME/$POOLING/$SEED
    RESUME=()
    if [ -f "$LOGDIR/checkpoints/last.ckpt" ]; then RESUME=(--ckpt_path last); echo "== $POOLING seed $SEED: resuming"; fi
    echo "== $POOLING seed $SEED"
    $PY -m polypool fit "${ARGS[@]}" --model.pooling "$POOLING" --seed_everything "$SEED" \
      --trainer.default_root_dir "$LOGDIR" --records_root "$RUNS" --experiment "$CONFIG_NAME" \
      ${RESUME[@]+"${RESUME[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  done
done

$PY -m polypool.tables --runs "$RUNS" --dataset "$DATASET" --backbone "$CONFIG_NAME" --out "$OUT/${DATASET}_${CONFIG_NAME}" ${NOTE[@]+"${NOTE[@]}"}
echo "reproduce.sh: done in $(( $(date +%s) - START )) s; table: $OUT/${DATASET}_${CONFIG_NAME}.md"
