#!/usr/bin/env bash
# Serve this bundle in MONAI Label (checked with monailabel 0.8.5, MONAI 1.6.1) for 3D Slicer or OHIF.
#
#   bash docs/run_monailabel.sh <studies folder> [port] [monailabel start_server options]
#
# <studies folder>: candidate patches as NIfTI (.nii.gz, HU; 2D or 3D, any size: resized to the
# patch size, the middle slice of a 3D patch for the 2D model). "Run" on a patch answers
# {"prediction": [{"idx": 0, "label": "nodule", "score": <nodule probability>}]}.
# Inference only: MONAI Label's trainer would feed label images, this bundle trains on a patch datalist
# with 0/1 labels (docs/README.md), so the server starts with --conf skip_trainers true.
# Environment variables: MONAILABEL_WORK (where the app and its copy of this bundle live, default
# ~/.lungnod/monailabel), MONAILABEL_HOST (default 127.0.0.1; 0.0.0.0 to serve other machines).
#
# Before: this bundle needs models/model.pt (train it: see docs/README.md), and the python on PATH
# needs monailabel and lungnod installed together. MONAI Label needs torchvision, numpy<2 and (for its
# server) pydicom<3, so keep it in its own venv, e.g. (x86_64 machines with the torch wheels on disk;
# elsewhere any torch/torchvision pair that imports together):
#   python3 -m venv ~/.venvs/monailabel && . ~/.venvs/monailabel/bin/activate
#   pip install torch==2.14.1 torchvision==0.29.1
#   pip install monailabel==0.8.5 monai==1.6.1 "numpy<2" "pydicom>=2.4.4,<3" <lungnod's other dependencies>
#   pip install --no-deps -e <lungnod repository>
# (the repository's tests/ecosystem/monailabel_env.sh does exactly this into .venv-monailabel).
set -euo pipefail

# the checks, the app and the copy of this bundle in $MONAILABEL_WORK, then `monailabel start_server`:
# lungnod_ext/apps/monailabel_serve.py (arguments after the port go to start_server as they are)
BUNDLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -ge 1 ]] || { echo "usage: bash docs/run_monailabel.sh <studies folder> [port] [start_server options]" >&2; exit 2; }
exec python -m lungnod_ext.apps.monailabel_serve "$BUNDLE_DIR" "$@" --conf skip_trainers true
