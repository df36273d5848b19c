"""The shipped models on noisier versions of the real scans, as a low-dose screening CT would look.

    python tests/benchmarks/bench_dose.py [--work DIR] [--noise 0,20,40,60,100] [--sharpen A] [--fast] [--results FILE]

Each LIDC series (``../shared/data/lidc``, converted by data_prep) gets correlated Gaussian noise added in
every axial slice (the training cohort's scanner augmentation, ``data_prep.training_cohort._correlated_noise``:
white noise smoothed in-plane with sigma 0.6 voxel, scaled to the given standard deviation in HU; slices
independent; seed fixed). CT quantum noise goes as 1 / sqrt(dose), so a version whose lung noise is s HU,
made from a scan with s0, looks like one taken at about (s0 / s)^2 of its dose. Both are measured the same way
(:func:`lung_noise_hu`: the median, over the slices, of a robust standard deviation of the difference of
neighbouring pixels / sqrt 2 in lung parenchyma; slow changes of the lung's density cancel in the difference;
it reads correlated noise low, so the ratio is a rough estimate: the scanner's own noise and the added noise
need not be correlated alike). The noise model is the image-domain one of
the training augmentation, not a projection-domain simulation: real low-dose noise is streakier near
bone and shoulders. ``--sharpen A`` first passes each scan through a sharper reconstruction kernel
(:func:`sharper`, an in-plane unsharp mask of amount A; 2 is twice the training cohort's strongest, with edge
overshoot and finer noise as a lung kernel gives) and measures the dose against that sharp version.

For each version ``lungnod detect`` (shipped models, default configs or ``--fast``, a fresh process)
reports nodules at p >= 0.5, scored as ``bench_slice_thickness.py`` does: per reference nodule found (a
reported centre within its radius, LUNA16), its probability and long x short axis; false positives
(reported, hitting no nodule and no small mark); wall seconds and peak memory. LIDC-IDRI-0001 is the
shipped models' unseen patient; 0002 and 0006 are their training series (robustness, not accuracy).
Printed and written to ``tests/benchmarks/results/dose.json``. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results" / "dose.json"
NOISE_SEED = 7
PARENCHYMA_HU = (-950.0, -700.0)


def lung_noise_hu(hu_xyz: np.ndarray) -> float:
    """The scan's noise (HU) in lung parenchyma: the median over axial slices (the third axis) of a robust
    standard deviation (1.4826 x the median absolute deviation) of (pixel - its neighbour along the first axis) /
    sqrt 2, over pixel pairs whose 5 x 5 neighbourhood lies where the slice's 7 x 7 mean is within
    ``PARENCHYMA_HU`` (the mean, not the pixels: strong noise would empty a test on the pixels themselves);
    NaN when no slice has 1000 such pairs."""
    sds = []
    for k in range(hu_xyz.shape[2]):
        s = np.asarray(hu_xyz[:, :, k], dtype=np.float32)
        mean = ndi.uniform_filter(s, 7)
        calm = ndi.binary_erosion((mean >= PARENCHYMA_HU[0]) & (mean <= PARENCHYMA_HU[1]), structure=np.ones((5, 5), bool))
        pair = calm[:-1, :] & calm[1:, :]
        if pair.sum() < 1000:
            continue
        d = (s[:-1, :] - s[1:, :])[pair]
        sds.append(float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0)))
    return float(np.median(sds)) if sds else float("nan")


def _hu_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """float HU -> an int16 NIfTI (rounded, clipped to -1024..3071) with ``affine`` as qform and sform."""
    img = nib.Nifti1Image(np.clip(np.rint(data), -1024, 3071).astype(np.int16), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    return img


def noisier(image: nib.Nifti1Image, sd_hu: float, seed: int = NOISE_SEED) -> nib.Nifti1Image:
    """``image`` (int16 HU, axial slices along its third axis) + correlated noise of ``sd_hu`` (module doc)."""
    from data_prep.training_cohort import _correlated_noise

    data = np.asarray(image.dataobj).astype(np.float32)
    rng = np.random.default_rng(seed)
    # (x, y, z) array: in-plane correlation on the first two axes, none along z
    data += _correlated_noise(data.shape, rng, sd_hu, (0.6, 0.6, 0.0))
    return _hu_image(data, image.affine)


def sharper(image: nib.Nifti1Image, amount: float, sigma_mm: float = 0.8) -> nib.Nifti1Image:
    """``image`` (int16 HU, axial slices along its third axis) through a sharper reconstruction kernel, as the
    training cohort's scanner augmentation makes one (``data_prep.training_cohort.augment_scanner``): the
    in-plane unsharp mask x + ``amount`` (x - Gaussian(x, ``sigma_mm``)); the cohort's amounts are 0.3-1.0.
    It raises the scan's own noise with the edges, as a lung (sharp) kernel does."""
    data = np.asarray(image.dataobj).astype(np.float32)
    spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
    blurred = ndi.gaussian_filter(data, sigma=(sigma_mm / spacing[0], sigma_mm / spacing[1], 0.0))
    data += amount * (data - blurred)
    return _hu_image(data, image.affine)


def thicker(image: nib.Nifti1Image, slice_mm: float) -> nib.Nifti1Image:
    """``image`` (int16 HU, axial slices along its third axis) as a thicker reconstruction on the same grid, as the
    training cohort's scanner augmentation makes one (``data_prep.training_cohort.augment_scanner``): a Gaussian
    along the slices that widens the slice profile from the slice spacing to ``slice_mm`` (FWHM, mm); unchanged
    when ``slice_mm`` is not thicker than the spacing."""
    from data_prep.slice_profile import slice_profile_sigma

    data = np.asarray(image.dataobj).astype(np.float32)
    sigma = slice_profile_sigma(float(np.sqrt((image.affine[:3, 2] ** 2).sum())), slice_mm)
    if sigma is not None:
        data = ndi.gaussian_filter1d(data, sigma=sigma, axis=2)
    return _hu_image(data, image.affine)


def main() -> None:
    from bench_slice_thickness import converted_series, run_version, score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/bench_dose")
    ap.add_argument("--noise", default="0,20,40,60,100", help="added noise levels, HU (comma-separated)")
    ap.add_argument("--sharpen", type=float, default=0.0,
                    help="pass the scans through a sharper kernel first (unsharp-mask amount; 0: none)")
    ap.add_argument("--fast", action="store_true", help="lungnod detect --fast (the fast pair)")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    work = Path(args.work)
    levels = [float(v) for v in args.noise.split(",")]
    extra = ["--fast"] if args.fast else []
    results = []
    kernel = f"_sharpen{args.sharpen:g}" if args.sharpen > 0 else ""
    for src, case, image, refs, marks in converted_series(work):
        if args.sharpen > 0:
            src = work / kernel.lstrip("_") / f"{case}.nii.gz"
            src.parent.mkdir(parents=True, exist_ok=True)
            image = sharper(image, args.sharpen)
            nib.save(image, src)
        own = lung_noise_hu(np.asarray(image.dataobj))
        for sd in levels:
            path, measured = src, own
            if sd > 0:
                path = work / f"noise{sd:g}{kernel}" / f"{case}.nii.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                version = noisier(image, sd)
                nib.save(version, path)
                measured = lung_noise_hu(np.asarray(version.dataobj))     # the int16 volume just written
            dose = (own / measured) ** 2
            got = run_version(path, work / "out" / case / f"noise{sd:g}{kernel}", extra)
            scored = score(got.pop("nodules"), refs, marks)
            row = {"case": case, "sharpen": args.sharpen, "added_noise_hu": sd, "lung_noise_hu": round(measured, 1),
                   "own_noise_hu": round(own, 1), "dose_fraction": round(dose, 3), **scored, **got}
            results.append(row)
            found = ", ".join(f"{n['diameter_mm']} mm/{n['n_readers']}r: "
                              + (f"p {n['probability']:.2f}" if n["found"] else "missed") for n in scored["nodules"])
            print(f"{case[:14]}{' sharpen %g' % args.sharpen if args.sharpen > 0 else ''} +{sd:3g} HU (lung noise {measured:5.1f} HU, ~{100 * dose:3.0f} % dose) "
                  f"FP {scored['false_positives']}  {got['wall_s']:5.1f} s {got['peak_rss_gb']:.2f} GB  {found}",
                  flush=True)
    Path(args.results).write_text(json.dumps({"command": " ".join(sys.argv), "models": "fast" if args.fast else "default",
                                              "results": results}, indent=1) + "\n")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
