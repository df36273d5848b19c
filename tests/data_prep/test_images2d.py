"""The reference design's 2D dataset form: slice images + colour masks in, grey PNG + 0/255 labels + a MONAI
datalist out (pairs by stem, 8/16 bit, colour picking, problems one line each); export2d from real LIDC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep.errors import InputNotFoundError
from data_prep.images2d import export_images2d, import_images2d, patient_of, window_to_uint8


def _png(path: Path, arr) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(arr))
    return path


def _disc(shape, centre, r) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r


@pytest.fixture
def seed_form(tmp_path) -> Path:
    """Three patients' slices as the reference design keeps them: grey PNG / 16-bit TIFF / colour JPEG
    images, masks with the nodule drawn in red (BGR (0, 0, 255)) or grey, one image without a mask, one
    mask without an image, one mask of the wrong size."""
    src = tmp_path / "seed"
    rng = np.random.default_rng(0)
    for p in range(3):
        for k in range(4):
            stem = f"patient{p}_slice_{k:02d}"
            img = (rng.random((80, 96)) * 200).astype(np.uint8)
            drawing = np.zeros((80, 96, 3), np.uint8)
            drawing[_disc((80, 96), (30 + k, 40), 6)] = (0, 0, 255)
            if p == 1:
                _png(src / "images" / f"{stem}.tif", img.astype(np.uint16) * 256)
                _png(src / "masks" / f"{stem}_mask.png", drawing[..., 2])          # grey mask, _mask suffix
            elif p == 2:
                _png(src / "images" / f"{stem}.jpg", np.repeat(img[..., None], 3, axis=2))
                _png(src / "masks" / f"{stem}.png", drawing)
            else:
                _png(src / "images" / f"{stem}.png", img)
                _png(src / "masks" / f"{stem}.png", drawing)
    _png(src / "images" / "lonely_01.png", np.zeros((80, 96), np.uint8))
    _png(src / "masks" / "orphan_01.png", np.zeros((80, 96), np.uint8))
    _png(src / "masks" / "patient0_slice_03.png", np.zeros((40, 40, 3), np.uint8))   # overwrites: wrong size
    return src


def test_pairs_reads_and_reports(seed_form, tmp_path):
    out = tmp_path / "out"
    report = import_images2d(seed_form / "images", seed_form / "masks", out)
    assert len(report.pairs) == 11                             # 12 slices, one with a wrong-size mask
    assert sorted(Path(p.split(": ")[0]).name for p in report.problems) == [
        "lonely_01.png", "orphan_01.png", "patient0_slice_03.png"]
    assert any("size 40x40 differs from its image's 96x80" in p for p in report.problems)
    for stem in ("patient0_slice_00", "patient1_slice_02", "patient2_slice_01"):
        image = cv2.imread(str(out / "images" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        label = cv2.imread(str(out / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert image.ndim == 2 and label.dtype == np.uint8 and set(np.unique(label)) == {0, 255}
        k = int(stem[-2:])
        truth = _disc((80, 96), (30 + k, 40), 6)
        assert ((label > 0) == truth).mean() > 0.995           # JPEG / colour / grey masks all read right
    assert cv2.imread(str(out / "images" / "patient1_slice_00.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    lists = json.loads((out / "datalist.json").read_text())
    patients = {name: {e["patient"] for e in lists[name]} for name in lists}
    assert sum(len(v) for v in lists.values()) >= 11
    assert not patients["validation"] & patients["training"] and not patients["testing"] & patients["training"]
    assert all((out / e["image"]).is_file() and (out / e["label"]).is_file() for e in lists["training"])


def test_mask_colour_picks_one_colour(tmp_path):
    drawing = np.zeros((64, 64, 3), np.uint8)
    drawing[10:20, 10:20] = (0, 0, 255)                         # red nodule
    drawing[40:50, 40:50] = (0, 255, 0)                         # green: another structure
    _png(tmp_path / "i" / "a_01.png", np.full((64, 64), 100, np.uint8))
    _png(tmp_path / "m" / "a_01.png", drawing)
    import_images2d(tmp_path / "i", tmp_path / "m", tmp_path / "any")
    import_images2d(tmp_path / "i", tmp_path / "m", tmp_path / "red", mask_color=(255, 0, 0))
    assert (cv2.imread(str(tmp_path / "any" / "labels" / "a_01.png"), 0) > 0).sum() == 200
    assert (cv2.imread(str(tmp_path / "red" / "labels" / "a_01.png"), 0) > 0).sum() == 100


def test_no_usable_pair_writes_nothing(tmp_path):
    _png(tmp_path / "i" / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.png").write_bytes(b"not a png")
    with pytest.raises(InputNotFoundError, match="no usable image \\+ mask pair .*a.png: cannot read the image"):
        import_images2d(tmp_path / "i", tmp_path / "m", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_exit_codes(seed_form, tmp_path):
    cmd = [sys.executable, "-m", "data_prep", "images2d", "--images", str(seed_form / "images"), "--masks"]
    partial = subprocess.run(cmd + [str(seed_form / "masks"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert partial.returncode == 1 and "11 image + mask pair(s)" in partial.stdout
    assert len([ln for ln in partial.stderr.splitlines() if "lonely_01.png" in ln]) == 1
    missing = subprocess.run(cmd + [str(tmp_path / "nope"), "--out", str(tmp_path / "o2")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nope'}: no such folder"


@pytest.mark.parametrize("stem, patient", [("LIDC-IDRI-0001_718b6593_slice_085", "LIDC-IDRI-0001_718b6593"),
                                           ("p12-034", "p12"), ("case7_img12", "case7"), ("single", "single")])
def test_patient_from_name(stem, patient):
    assert patient_of(stem) == patient


def test_window_to_uint8():
    assert window_to_uint8(np.array([-2000, -1350, -600, 150, 900])).tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match="window"):
        window_to_uint8(np.zeros(3), (100, -100))


def test_export_from_real_lidc_round_trips(lidc_converted, tmp_path):
    out = export_images2d(lidc_converted, tmp_path / "seed_form", negatives_per_case=3)
    images = sorted(p.name for p in (out / "images").glob("*.png"))
    assert len(images) == 8 + 3                    # LIDC-IDRI-0001: the nodule on slices 86..93, + 3 without
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == images
    red = cv2.imread(str(out / "masks" / "LIDC-IDRI-0001_718b6593_slice_090.png"))
    assert red[..., 2].max() == 255 and red[..., :2].max() == 0 and (red[..., 2] > 0).sum() > 150
    report = import_images2d(out / "images", out / "masks", tmp_path / "imported")
    assert len(report.pairs) == 11 and not report.problems
