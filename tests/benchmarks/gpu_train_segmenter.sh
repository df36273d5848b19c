#!/bin/bash
# The recipe's segmentation stage (`lungnod train-models --until segmentation`) on a GPU machine that cannot
# read ../shared/data/lidc: the training series arrive converted and packed (tests/benchmarks/device_pack.py;
# PACK holds <case>.img.xz and converted/ without images/), are restored exactly, and train there with AMP
# and more cohort copies (loader workers: the recipe takes up to 8 with a GPU). A time limit stops the
# training if it runs long (the best-validation checkpoint is kept). Writes to OUT: the fp16 checkpoint in 15 MB parts
# (cat seg_model.pt.part-* > model.pt) and logs.tar.gz (training log, histories, timing, stage markers).
# The rest of the recipe then runs elsewhere: put model.pt in <work>/models/segmentation/, mark the stage
# done (<work>/stages/segmentation.done) and run the same train-models command without --until (with fewer
# --copies if the CPU is to make the candidates: copy k of a series is the same volume whatever the count).
# usage: bash tests/benchmarks/gpu_train_segmenter.sh PACK WORK OUT [COPIES] [EPOCHS] [LIMIT_S] [VAL_INTERVAL]
# On the lent device (64 MiB per call; session 21): move bundles/*/models/*.pt and the example slab out of
# the working tree for the calls (the tracked tree is 64.03 MiB), then two calls back to back (the machine
# is released 30 s after a call): (1) carry .whl (wheels of MONAI and the packages the image lacks) and
# .devdata1 (one packed series + converted/ without images/): pip install --target /tmp/site, copy to
# /tmp/pack; (2) carry .devdata2 (the other packed series): copy to /tmp/pack, PYTHONPATH=/tmp/site, run this.
set -u
PACK=${1:?pack dir}; W=${2:?work dir}; O=${3:?out dir}; COPIES=${4:-24}; EPOCHS=${5:-120}; LIMIT=${6:-420}
VAL=${7:-15}; PY=${PY:-python3}
export PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
mkdir -p "$W/converted/images" "$W/stages" "$O"
step() { echo "=== $1 $(date +%T)"; }
step env; nvidia-smi -L 2>&1 | head -1; nproc
$PY -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)"
step unpack
cp -r "$PACK/converted/." "$W/converted/"
$PY tests/benchmarks/device_pack.py unpack "$PACK"/*.img.xz --out "$W/converted/images" || exit 1
echo '{"report": "converted elsewhere; restored by tests/benchmarks/device_pack.py"}' > "$W/stages/convert.done"
step train
t0=$(date +%s)
timeout -k 15 "$LIMIT" $PY -m lungnod_ext train-models --lidc "$PACK" --out "$W" --until segmentation --no-mlflow \
  --copies "$COPIES" --seg-epochs "$EPOCHS" --workers "$(( $(nproc) > 2 ? $(nproc) - 2 : 2 ))" --seg val_interval="$VAL"
echo "train-models rc=$? wall=$(( $(date +%s) - t0 )) s"
step export
$PY -c "
import sys; from lungnod_ext.apps.train_models import export_fp16
print(export_fp16(sys.argv[1], sys.argv[2]))" "$W/models/segmentation/model.pt" "$W/export/model.pt" &&
  split -b 15000000 "$W/export/model.pt" "$O/seg_model.pt.part-" && sha256sum "$W/export/model.pt"
tail -3 "$W/runs/segmentation/val_history.json" 2>/dev/null
tar czf "$O/logs.tar.gz" -C "$W" logs stages $(cd "$W" && ls recipe.json runs/segmentation/*.json cohort/datalist.json \
  cohort/nodules.csv 2>/dev/null)
ls -la "$O"
