#!/usr/bin/env bash
# Build (or reuse) the separate MONAI Label environment that tests/ecosystem/test_monailabel.py drives.
#
#   bash tests/ecosystem/monailabel_env.sh            # -> <repo>/.venv-monailabel (gitignored)
#   MONAILABEL_VENV=/some/dir bash tests/ecosystem/monailabel_env.sh
#
# Why a second venv: monailabel's bundle infer task imports torchvision at import time
# (monailabel/transform/post.py: `from torchvision.utils import make_grid, save_image`), and the only
# torchvision that imports on these x86_64 machines is 0.29.1 beside torch 2.14.1 (both on local disk,
# a CUDA build that runs on the CPU, ~5.5 GB). PyPI's torchvision does not import beside the project's
# torch 2.13.0+cpu; monailabel also needs numpy<2 and, for its server, pydicom<3 (see below). The main
# .venv keeps torch 2.13.0, numpy 2 and pydicom 3; this one holds monailabel, torch 2.14.1,
# torchvision 0.29.1, numpy 1.26, pydicom 2.4, monai 1.6.1 and the project itself (editable,
# --no-deps, its other dependencies resolved with monailabel's in one pip run).
#
# Idempotent: an existing venv whose stamp (hash of this script, pyproject.toml and the repo path)
# matches and whose imports work is reused (a few seconds); any other is rebuilt from scratch.
# Prints the venv's python on its last line (stdout); progress goes to stderr.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MONAILABEL_VENV:-$REPO/.venv-monailabel}"
PYTHON="${PYTHON:-python3}"
MONAILABEL_REQ="monailabel==0.8.5"
MONAI_REQ="monai==1.6.1"
# monailabel's numpymaxflow and pydicom-seg require numpy<2; said up front so pip picks the
# project's numpy-1-compatible releases (opencv-python-headless 4.11, pylibjpeg-*jpeg 2.2/2.3)
# instead of giving up with ResolutionImpossible while backtracking through monai's extras.
NUMPY_REQ="numpy<2"
# monailabel's server imports pydicom-seg 0.4.1 (the last release), which imports
# pydicom._storage_sopclass_uids, gone in pydicom 3, but declares only pydicom>=1.4.2: without this
# pin `monailabel start_server` dies at import. highdicom (the project's DICOM SEG export, >=0.28)
# needs pydicom 3, so it is left out here; MONAI Label writes DICOM SEG with its own pydicom-seg.
PYDICOM_REQ="pydicom>=2.4.4,<3"
case "$(uname -m)" in
    aarch64|arm64) TORCH_REQS=("torch==2.9.1" "torchvision==0.24.1") ;;
    *)             TORCH_REQS=("torch==2.14.1" "torchvision==0.29.1") ;;
esac

# the editable install points at this checkout, so its path is part of the stamp
HASH="$( (cat "${BASH_SOURCE[0]}" "$REPO/pyproject.toml"; echo "$REPO") | sha1sum | cut -c1-12)"
STAMP="$VENV/.monailabel-env-$HASH"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input)
CHECK='import monailabel, monai, torch, torchvision, numpy, lungnod_ext, data_prep
import monailabel.app
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask'

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1; then
    echo "monailabel env up to date: $VENV" >&2
    echo "$VENV/bin/python"
    exit 0
fi

echo "building monailabel env at $VENV (torch ${TORCH_REQS[*]}, $MONAILABEL_REQ) ..." >&2
start=$(date +%s)
# a stale env (other pins, or a build cut short) is rebuilt from scratch, so nothing a former pin
# brought in lingers; a folder this script did not make is never removed
if [[ -e "$VENV" ]]; then
    if [[ ! -f "$VENV/.monailabel-env" ]]; then
        echo "$VENV exists but was not made by $0: remove it or set MONAILABEL_VENV elsewhere" >&2
        exit 2
    fi
    rm -rf "$VENV"
fi
"$PYTHON" -m venv "$VENV"
touch "$VENV/.monailabel-env"

# 1. torch + torchvision first, from this machine's local wheels (see .library machines notes).
"${PIP[@]}" "${TORCH_REQS[@]}"

# 2. monailabel, monai pinned to the project's version, and the project's own dependencies resolved
#    together in one pip run, with the torch pair held where step 1 put it. Left out of the project's
#    list: torch (its <2.14 range is for the main venv's 2.13.0+cpu), numpy and pydicom (pinned above),
#    highdicom (see above) and jsonschema (>=4 for the metadata-schema tests, which run in the main
#    venv; monailabel's pydicom-seg pins jsonschema<4).
mapfile -t PROJECT_DEPS < <("$VENV/bin/python" - "$REPO/pyproject.toml" <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
for dep in deps:
    name = re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].strip().lower()
    if name not in {"torch", "monai", "numpy", "pydicom", "highdicom", "jsonschema"}:
        print(dep)
EOF
)
"${PIP[@]}" "${TORCH_REQS[@]}" "$MONAILABEL_REQ" "$MONAI_REQ" "$NUMPY_REQ" "$PYDICOM_REQ" \
    "${PROJECT_DEPS[@]}"

# 3. the project itself, editable, without letting pip touch torch again.
"${PIP[@]}" --no-deps -e "$REPO"

"$VENV/bin/python" -c "$CHECK" >&2
"$VENV/bin/python" -m pip check >&2 || echo "pip check reported conflicts (above); imports work" >&2
touch "$STAMP"
echo "monailabel env built in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1) on disk" >&2
echo "$VENV/bin/python"
