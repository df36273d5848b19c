#!/bin/bash
# The project on a GPU, as a user with one runs it (no flags: the configs take cuda:0 and AMP): lungnod
# detect on the shipped example slab on the GPU (twice) and on the CPU (CUDA_VISIBLE_DEVICES=), the shipped
# demo, both bundles' train.json for a few epochs on a small converted cohort, and detect with the two
# checkpoints so trained. Prints each step's output tail and wall time; everything is written under OUTDIR/res
# (compare OUTDIR/res/{gpu1,cpu}/*/*_candidates.csv). Needs a converted cohort with datalist.json, e.g.
# `python -m data_prep demo --cases 4 --out X` (X/converted), made where SimpleITK is installed.
# usage: bash tests/benchmarks/bench_gpu.sh OUTDIR COHORT [PYTHON]     (README: "On a GPU")
set -u
O=${1:?out dir}; COHORT=${2:?converted cohort}; PY=${3:-python3}; mkdir -p $O/res
SLAB=lungnod_ext/example_data/LIDC-IDRI-0001_slab.nii.gz
SEG=bundles/lung_nodule_ct_segmentation; CLS=bundles/lung_nodule_ct_classification
export PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
step() { echo "=== $1 $(date +%T)"; }
tm() { local t0=$(date +%s.%N); "$@"; local rc=$?; awk -v a=$t0 -v b=$(date +%s.%N) -v r=$rc 'BEGIN{printf "rc=%d wall=%.1f s\n", r, b-a}'; }
step env; nvidia-smi -L 2>&1 | head -2; $PY -c "import torch,monai,numpy;print('torch',torch.__version__,'cuda',torch.cuda.is_available(),'monai',monai.__version__,'numpy',numpy.__version__)"
step detect_gpu_1; tm timeout 120 $PY -m lungnod_ext detect $SLAB --out $O/res/gpu1 2>&1 | tail -4
step detect_gpu_2; tm timeout 120 $PY -m lungnod_ext detect $SLAB --out $O/res/gpu2 2>&1 | tail -4
step detect_cpu; tm timeout 150 env CUDA_VISIBLE_DEVICES= $PY -m lungnod_ext detect $SLAB --out $O/res/cpu 2>&1 | tail -4
step demo_gpu; tm timeout 120 $PY -m lungnod_ext demo --out $O/res/demo 2>&1 | tail -8
step seg_train_gpu
tm timeout 150 $PY -m monai.bundle run training --config_file $SEG/configs/train.json --bundle_root $SEG \
  --dataset_dir $COHORT --output_dir $O/res/seg_eval --ckpt_dir $O/res/seg_models --epochs 4 --val_interval 2 \
  --patch_size "[160,160]" --learning_rate 0.001 --num_workers 4 > $O/res/seg_train.log 2>&1
tail -5 $O/res/seg_train.log; grep -i "error\|Traceback" $O/res/seg_train.log | head -5
step cls_patches; tm timeout 90 $PY -c "
from pathlib import Path; from lungnod_ext.apps.patch_dataset import build_patch_dataset
print(build_patch_dataset(Path('$COHORT'), Path('$O/res/patches'), positive_copies=6, random_negatives_per_case=12))" 2>&1 | tail -2
step cls_train_gpu
tm timeout 120 $PY -m monai.bundle run training --config_file $CLS/configs/train.json --bundle_root $CLS \
  --dataset_dir $O/res/patches --output_dir $O/res/cls_eval --ckpt_dir $O/res/cls_models --epochs 6 --val_interval 3 \
  --num_workers 4 > $O/res/cls_train.log 2>&1
tail -5 $O/res/cls_train.log; grep -i "error\|Traceback" $O/res/cls_train.log | head -5
step cls_infer_trained_gpu; tm timeout 90 $PY -m lungnod_ext detect $SLAB --out $O/res/gpu_own --seg-ckpt $O/res/seg_models/model.pt --cls-ckpt $O/res/cls_models/model.pt 2>&1 | tail -3
step compare
$PY - "$O/res" <<'PY'
import csv, glob, json, sys
res = sys.argv[1]
def cands(run):
    return list(csv.DictReader(open(glob.glob(f"{res}/{run}/*/*_candidates.csv")[0])))
def timing(run):
    return json.load(open(glob.glob(f"{res}/{run}/summary.json")[0])).get("seconds")
g, c = cands("gpu1"), cands("cpu")
out = {"n_candidates": {"gpu": len(g), "cpu": len(c)}}
if len(g) == len(c):
    out["max_abs_probability_difference"] = max(abs(float(a["probability"]) - float(b["probability"])) for a, b in zip(g, c))
    out["candidates_with_equal_voxel_count"] = sum(a["n_voxels"] == b["n_voxels"] for a, b in zip(g, c))
    out["max_voxel_count_difference"] = max(abs(int(a["n_voxels"]) - int(b["n_voxels"])) for a, b in zip(g, c))
for run in ("gpu1", "gpu2", "cpu"):
    try:
        out[f"seconds_{run}"] = timing(run)
    except Exception as e:        # a summary without timings: say so, do not stop the comparison
        out[f"seconds_{run}"] = repr(e)
for b in ("seg_eval", "cls_eval"):
    try:
        out[f"{b}_train_timing"] = json.load(open(f"{res}/{b}/train_timing.json"))
    except OSError as e:
        out[f"{b}_train_timing"] = repr(e)
json.dump(out, open(f"{res}/gpu_check.json", "w"), indent=1)
print(json.dumps({k: v for k, v in out.items() if not k.endswith("train_timing")}, indent=1))
PY
step done
