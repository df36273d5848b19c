"""Ground-glass nodules by density: what the models report as a ground-glass opacity gets fainter.

    python tests/benchmarks/bench_ground_glass.py --models bundles                     # -600 to -400 HU
    python tests/benchmarks/bench_ground_glass.py --models bundles --hu=-750,-600       # fainter ones

The training cohort draws its ground glass at -600 to -400 HU (``data_prep.synth.nodules.GROUND_GLASS_HU``);
the one real ground-glass nodule here, LIDC-IDRI-0002's 26 mm one, is fainter (mean -694 HU inside the readers'
consensus) and no fold ever made a candidate of it. This measures the density effect on an unseen background:
``--copies`` copies of the held-out series (``--held-out``, default LIDC-IDRI-0001, which the shipped models never
saw) with 2-3 pure ground-glass nodules of ``--mm LOW,HIGH`` (default 6-30 mm, log-uniform) imaged in at
``--hu LOW,HIGH`` (uniform; no scanner augmentation, seed 4000: never used for training). Each nodule's density
is one draw mapped onto the range, so two ``--hu`` runs hold the same nodules (place, size, shape) at other
densities: a paired comparison. Per ``--models`` (``bundles``, ``bundles-fast`` or a ``lungnod train-models``
output) ``lungnod detect`` runs with default configs; per nodule: a candidate within its radius (LUNA16), its
segmentation and classifier probabilities, reported at ``--threshold`` or not, its Dice, its mean HU as imaged
in; per scan the false positives at the threshold. Printed and written to ``--results`` keyed by the models and
the density band. Nothing here is a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results" / "ground_glass.json"
GROUND_GLASS_SEED = 4000


def imaged_mean_hu(inserted: Path, name: str, refs: list[dict]) -> None:
    """Each reference's mean HU inside its instance mask in the copy ``name`` (as imaged in: blur, texture and
    the lung behind it included), set as ``mean_hu``."""
    from data_prep.nifti_io import read_nifti

    image, _ = read_nifti(inserted / "images" / f"{name}.nii.gz")
    instances, _ = read_nifti(inserted / "instances" / f"{name}.nii.gz")
    image, instances = np.asarray(image), np.asarray(instances)
    for r in refs:
        inside = instances == r["nodule_id"]
        r["mean_hu"] = round(float(image[inside].mean()), 1) if inside.any() else None


def main() -> None:
    from data_prep.training_cohort import CohortOptions
    from bench_masses import copies_parser, copy_items, detect_and_score, parse_range, write_keyed_result
    from bench_models import held_out_copies

    ap = copies_parser(__doc__.splitlines()[0], "/tmp/bench_ground_glass", RESULTS)
    ap.add_argument("--hu", default="-600,-400", metavar="LOW,HIGH",
                    help="ground-glass density, HU (the cohort's: --hu=-600,-400)")
    ap.add_argument("--mm", default="6,30", metavar="LOW,HIGH", help="nodule diameters, log-uniform")
    args = ap.parse_args()
    hu = parse_range(ap, "--hu", args.hu, "give LOW,HIGH, e.g. --hu=-750,-600")
    mm = parse_range(ap, "--mm", args.mm, "give LOW,HIGH, e.g. --mm=6,30")
    if args.copies < 1:
        ap.error("--copies must be >= 1")

    work = Path(args.work)
    converted = work / args.held_out / "converted"
    inserted = work / args.held_out / f"ground_glass_{mm[0]:g}_{mm[1]:g}mm_{hu[0]:g}_{hu[1]:g}HU"
    options = CohortOptions(augment=False, seed=GROUND_GLASS_SEED, nodules=(2, 3), size_bands=((mm[0], mm[1], 1.0),),
                            type_weights=(("ground_glass", 1.0),), ground_glass_hu=hu)
    _, names = held_out_copies(args.held_out, converted, inserted, args.copies, options)
    items = copy_items(inserted, names, "inserted ground glass")
    for it in items:
        imaged_mean_hu(inserted, it["name"], it["refs"])

    result = detect_and_score(items, args.models, args.threshold, args.seg, work, groups=("inserted ground glass",))
    rows = [r for s in result["scans"].values() for r in s["lesions"]]
    hus = [r["mean_hu"] for r in rows if r.get("mean_hu") is not None]
    print(f"ground glass drawn at {hu[0]:g} to {hu[1]:g} HU: imaged-in mean HU {min(hus):.0f} to {max(hus):.0f} "
          f"(median {np.median(hus):.0f})")
    result = {"command": " ".join(sys.argv), "hu": list(hu), "mm": list(mm), **result}
    seg = " " + " ".join(args.seg) if args.seg else ""
    write_keyed_result(args.results, f"{args.models}{seg} {mm[0]:g}-{mm[1]:g} mm {hu[0]:g} to {hu[1]:g} HU", result)


if __name__ == "__main__":
    main()
