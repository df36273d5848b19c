#!/usr/bin/env bash
# Serve this bundle in MONAI Label (checked with monailabel 0.8.5, MONAI 1.6.1) for 3D Slicer or OHIF.
#
#   bash docs/run_monailabel.sh <studies folder> [port]
#
# <studies folder>: the CT volumes (.nii.gz) to annotate; labels saved from the viewer land in
# <studies>/labels/final, and "Train" in the viewer retrains on them (BundleTrainTask).
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

NAME=lung_nodule_ct_segmentation
BUNDLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STUDIES="${1:?usage: bash docs/run_monailabel.sh <studies folder> [port]}"
PORT="${2:-8000}"
HOST="${MONAILABEL_HOST:-127.0.0.1}"
WORK="${MONAILABEL_WORK:-$HOME/.lungnod/monailabel}"
APP="$WORK/monaibundle"

command -v monailabel >/dev/null || { echo "monailabel is not on PATH: activate its venv first" >&2; exit 1; }
python -c "import lungnod_ext, monailabel" 2>/dev/null \
    || { echo "the python on PATH cannot import lungnod_ext and monailabel together" >&2; exit 1; }
[[ -f "$BUNDLE_DIR/models/model.pt" ]] \
    || { echo "$BUNDLE_DIR/models/model.pt is missing: train the bundle first (docs/README.md)" >&2; exit 1; }
[[ -d "$STUDIES" ]] || { echo "studies folder $STUDIES not found" >&2; exit 1; }

# 1. MONAI Label's monaibundle sample app, copied from the installed package (nothing is downloaded)
[[ -d "$APP" ]] || monailabel apps --download --name monaibundle --output "$WORK"

# 2. this bundle where that app looks for local bundles (<app>/model/<name>); a copy, because MONAI
#    Label's training writes models/model.pt and eval/ into it
if [[ -d "$APP/model/$NAME" ]]; then
    echo "using the existing copy $APP/model/$NAME (delete it to copy this bundle again)" >&2
else
    mkdir -p "$APP/model/$NAME"
    cp -r "$BUNDLE_DIR/configs" "$BUNDLE_DIR/docs" "$BUNDLE_DIR/LICENSE" "$APP/model/$NAME/"
    mkdir -p "$APP/model/$NAME/models"
    cp "$BUNDLE_DIR/models/model.pt" "$APP/model/$NAME/models/"
fi

# 3. serve: local bundles only (the default zoo source lists the online model zoo first) and no SAM2
#    (its infer task downloads weights at start); connect 3D Slicer's MONAI Label module to
#    http://$HOST:$PORT
exec monailabel start_server --app "$APP" --studies "$STUDIES" --host "$HOST" --port "$PORT" \
    --conf models "$NAME" --conf zoo_source github --conf sam2 false
