"""Which box-to-crop mapping classifies best, end to end (issue 18, "Crops framed as
FER2013's").  The ResNet9 learned FER2013's framing (the face about as large as the
48x48 frame, as a Haar box frames it); YuNet's box is tighter.  This measures it.

PublicTest faces (a fixed seeded sample) are enlarged to a random side in [64, 256]
(INTER_CUBIC), optionally turned by a random roll in [-20, 20] degrees (about their
centre, BORDER_REPLICATE), and pasted at a random place in a photo without faces (grey,
back to BGR, longer side 1024).  YuNet runs on the composite; the detection whose box
centre lies in the pasted square (the largest such) is the face, none = missed.  Each
found face is cropped with a grid of ``Framing`` values and classified; accuracy per
framing is over all N faces (a missed face is wrong) and over the found ones.  The
references: the model on the bare 48x48 faces (the upper bound), and the Haar cascade
with the identity framing on the same composites.  Also: the geometric answer (median
pasted side / YuNet box side, median vertical offset), and the face-crop rule
(``Detector.face_crop``) on faces sent as whole pictures.

The data (../shared/data) is for measuring only: never committed.

    python -m bench.framing [--n 1000] [--seed 0] [--json /tmp/framing.json]
        [--scales 1.0,1.1,...] [--shifts=-0.15,...] [--levels 0,1] [--conditions upright,rolled]
        [--haar-n N] [--whole-n 500] [--whole-sizes 48,96,200,320] [--threads 1]

Cost: one 48x48 forward pass is 3.74 GFLOP (about 36 ms on one thread of the
development machine), and every found face costs one per framing: the full grid (85
framings) at N=1000 in both conditions is about 170,000 passes, some two hours of CPU.
The options measure a part of the grid, or fewer Haar references, in less.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from emotion.faces import Face, Framing, HaarDetector, YuNetDetector, crop_face
from emotion.model import load_model
from training.common import DEFAULT_DATA, PUBLIC_TEST, fixed_sample, load_split

ROOT = Path(__file__).resolve().parents[1]
BACKGROUNDS = sorted((ROOT.parent / "shared" / "data" / "faces" / "images").glob("noface_*")) + [
    ROOT / "events" / "images" / "coffee.jpg"]
BACKGROUND_SIDE = 1024
SIDES = (64, 256)
ROLL = 20.0
SCALES = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6)
SHIFTS = (-0.15, -0.1, -0.05, 0.0, 0.05, 0.1)
LEVELS = (False, True)
# Framing() (scale None) is the clipped box itself, stretched to 48x48 (YuNet's box is
# taller than wide); this one is the square of the box's longer side, reported apart.
SQUARE_1 = Framing(1.0, 0.0, False)
WHOLE_SIZES = (48, 96, 200, 320)
WHOLE_N = 500
BATCH = 256


def backgrounds() -> list[np.ndarray]:
    """The photos without faces, grey as 3-channel BGR, longer side BACKGROUND_SIDE."""
    out = []
    for path in BACKGROUNDS:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise SystemExit(f"cannot read {path}")
        f = BACKGROUND_SIDE / max(grey.shape)
        size = (round(grey.shape[1] * f), round(grey.shape[0] * f))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
        out.append(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    return out


def predict(model, crops: list[np.ndarray]) -> np.ndarray:
    """Class ids of 48x48 crops, classified in batches."""
    if not crops:
        return np.zeros(0, np.int64)
    return np.concatenate([model.predict(crops[i:i + BATCH]).argmax(1) for i in range(0, len(crops), BATCH)])


def matched(faces: list[Face], x: int, y: int, side: int) -> Face | None:
    """The largest face whose box centre lies inside the pasted square."""
    for f in faces:  # largest first
        cx, cy = f.box.x + f.box.width / 2, f.box.y + f.box.height / 2
        if x <= cx <= x + side and y <= cy <= y + side:
            return f
    return None


def composite(face48: np.ndarray, side: int, roll: float, background: np.ndarray, fx: float, fy: float):
    """The face enlarged to ``side``, turned by ``roll`` degrees, pasted at fraction
    (fx, fy) of the free room in ``background``: (bgr, grey, x, y)."""
    face = cv2.resize(face48, (side, side), interpolation=cv2.INTER_CUBIC)
    if roll:
        c = (side - 1) / 2
        face = cv2.warpAffine(face, cv2.getRotationMatrix2D((c, c), roll, 1.0), (side, side),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    height, width = background.shape[:2]
    x, y = int(fx * (width - side + 1)), int(fy * (height - side + 1))
    bgr = background.copy()
    bgr[y:y + side, x:x + side] = face[:, :, None]
    return bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), x, y


def grid(scales, shifts, levels) -> list[Framing]:
    """The framings measured: the grid, Framing() (the baseline) whether or not the grid
    holds it, and SQUARE_1 last."""
    out = [Framing(s, d, lv) for lv, s, d in itertools.product(levels, scales, shifts)]
    if Framing() not in out:
        out.insert(0, Framing())
    return out + [SQUARE_1]


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a - b (per-face 0/1 correctness) and twice its standard error."""
    d = a.astype(float) - b.astype(float)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return {"diff": round(float(d.mean()), 4), "two_se": round(2 * se, 4)}


def pasted(images, labels, model, yunet, haar, backs, seed: int, framings: list[Framing],
           conditions: list[str], haar_n: int) -> dict:
    """Each condition (upright, rolled) on the same draws of size, photo and place."""
    n = len(labels)
    rng = np.random.default_rng(seed + 1)
    sides = rng.integers(SIDES[0], SIDES[1] + 1, n)
    which = rng.integers(0, len(backs), n)
    fx, fy = rng.random(n), rng.random(n)
    rolls = rng.uniform(-ROLL, ROLL, n)
    out = {}
    for cond in conditions:
        start = time.perf_counter()
        preds = np.full((len(framings), n), -1, np.int64)
        haar_preds = np.full(min(haar_n, n), -1, np.int64)
        ratios, offsets = [], []
        pending: list[tuple[int, list[np.ndarray]]] = []

        def flush():
            crops = [c for _, cs in pending for c in cs]
            p = predict(model, crops).reshape(len(pending), len(framings))
            for (i, _), row in zip(pending, p):
                preds[:, i] = row
            pending.clear()

        for i in range(n):
            roll = float(rolls[i]) if cond == "rolled" else 0.0
            side = int(sides[i])
            bgr, grey, x, y = composite(images[i], side, roll, backs[which[i]], fx[i], fy[i])
            face = matched(yunet.detect(bgr, grey), x, y, side)
            if face is not None:
                pending.append((i, [crop_face(grey, face, 48, fr) for fr in framings]))
                rx, ry, rw, rh = face.raw
                ratios.append(side / max(rw, rh))
                offsets.append((y + side / 2 - (ry + rh / 2)) / rh)
                if len(pending) * len(framings) >= 4 * BATCH:
                    flush()
            if i < len(haar_preds):
                hface = matched(haar.detect(None, grey), x, y, side)
                if hface is not None:
                    haar_preds[i] = predict(model, [crop_face(grey, hface.box, 48)])[0]
            if (i + 1) % 50 == 0:
                print(f"    {cond} {i + 1}/{n} {time.perf_counter() - start:.0f} s", flush=True)
        if pending:
            flush()
        found = preds[0] >= 0
        correct = preds == labels[None, :]
        rows = []
        for k, fr in enumerate(framings):
            rows.append({"scale": None if fr.scale is None else round(fr.scale, 2), "shift": fr.shift, "level_eyes": fr.level_eyes,
                         "square_path": fr is SQUARE_1,
                         "accuracy_all": round(float(correct[k].mean()), 4),
                         "accuracy_found": round(float(correct[k][found].mean()), 4) if found.any() else None,
                         "correct": int(correct[k].sum())})
        # the grid (the baseline, Framing(), and SQUARE_1 are reported apart)
        index = {(round(fr.scale, 2), fr.shift, fr.level_eyes): k for k, fr in enumerate(framings)
                 if fr is not SQUARE_1 and fr.scale is not None}
        base = framings.index(Framing())
        best = max(index.values(), key=lambda k: (correct[k].sum(), -abs(framings[k].scale - 1)))
        by_level = {}
        for level in sorted({key[2] for key in index}):
            k = max((k for key, k in index.items() if key[2] == level), key=lambda k: correct[k].sum())
            by_level[str(level)] = rows[k]
        # Levelling against not, at the same scale and shift (paired over faces).
        level_gain = {}
        for (s, d, lv), k in index.items():
            if lv and (s, d, False) in index:
                level_gain[f"{s:g},{d:g}"] = paired(correct[k], correct[index[(s, d, False)]])
        hn = len(haar_preds)
        hfound = haar_preds >= 0
        hcorrect = haar_preds == labels[:hn]
        out[cond] = {
            "n": n,
            "yunet_found": int(found.sum()),
            "yunet_found_rate": round(float(found.mean()), 4),
            "framings": rows,
            "best": rows[best],
            "baseline": rows[base],
            "best_vs_baseline": paired(correct[best], correct[base]),
            "best_by_level": by_level,
            "level_gain_same_point": level_gain,
            "level_gain_mean": round(float(np.mean([g["diff"] for g in level_gain.values()])), 4)
            if level_gain else None,
            "haar": None if not hn else {
                "n": hn, "found": int(hfound.sum()), "found_rate": round(float(hfound.mean()), 4),
                "accuracy_all": round(float(hcorrect.mean()), 4),
                "accuracy_found": round(float(hcorrect[hfound].mean()), 4) if hfound.any() else None,
                "yunet_baseline_same_faces": round(float(correct[base][:hn].mean()), 4),
                "yunet_best_same_faces": round(float(correct[best][:hn].mean()), 4)},
            "seconds": round(time.perf_counter() - start, 1),
        }
        if ratios:
            out[cond]["geometry"] = {
                "median_side_over_box": round(statistics.median(ratios), 4),
                "median_offset_over_height": round(statistics.median(offsets), 4),
                "quartiles_side_over_box": [round(float(q), 4) for q in np.percentile(ratios, [25, 75])],
                "quartiles_offset_over_height": [round(float(q), 4) for q in np.percentile(offsets, [25, 75])],
            }
        print(f"  {cond}: {out[cond]['seconds']} s", flush=True)
    return out


def whole_pictures(images, labels, model, detectors, sizes) -> dict:
    """The face-crop rule: faces sent as whole pictures at several sizes, answered with
    and without the rule.  The whole picture's prediction is shared by the detectors."""
    out = {name: [] for name in detectors}
    for size in sizes:
        greys = [g if size == 48 else cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC) for g in images]
        whole_pred = predict(model, [cv2.resize(g, (48, 48), interpolation=cv2.INTER_AREA) for g in greys])
        for name, det in detectors.items():
            wholes, idx, crops = [], [], []
            for i, grey in enumerate(greys):
                bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
                faces = det.detect(bgr, grey)
                wholes.append(det.face_crop(bgr, grey, faces, 256) is not None)
                if faces:
                    idx.append(i)
                    crops.append(crop_face(grey, faces[0], 48, det.framing))
            crop_pred = np.full(len(labels), -1, np.int64)
            crop_pred[idx] = predict(model, crops)
            wholes = np.array(wholes)
            rule = np.where(wholes, whole_pred, crop_pred)
            row = {"size": size, "n": len(labels), "whole_picture_used": int(wholes.sum())}
            for key, p in (("rule", rule), ("no_rule", crop_pred)):
                row[key] = {"answered": round(float((p >= 0).mean()), 4),
                            "accuracy_all": round(float((p == labels).mean()), 4)}
            out[name].append(row)
    return out


def pct(v) -> str:
    return "   -  " if v is None else f"{100 * v:5.1f}%"


def pp(p: dict) -> str:
    return f"{100 * p['diff']:+.1f} pp (+-{100 * p['two_se']:.1f}, 2 SE paired)"


def report(r: dict) -> None:
    print(f"\nBare 48x48 faces (upper bound), n={r['n']}: {pct(r['bare_accuracy'])}")
    scales, shifts, levels = r["grid"]["scales"], r["grid"]["shifts"], r["grid"]["levels"]
    for cond, c in r["pasted"].items():
        h = c["haar"]
        print(f"\n== {cond} (roll {'0' if cond == 'upright' else f'U[-{ROLL:g},{ROLL:g}]'} deg), n={c['n']}: "
              f"YuNet found {c['yunet_found']} ({pct(c['yunet_found_rate'])})")
        if h:
            print(f"  Haar, identity framing, first {h['n']} faces: found {h['found']} ({pct(h['found_rate'])}), "
                  f"accuracy all {pct(h['accuracy_all'])}, found {pct(h['accuracy_found'])}  "
                  f"[YuNet on the same faces: baseline {pct(h['yunet_baseline_same_faces'])}, "
                  f"best {pct(h['yunet_best_same_faces'])}]")
        table = {(f["scale"], f["shift"], f["level_eyes"]): f for f in c["framings"] if not f["square_path"]}
        for metric in ("accuracy_all", "accuracy_found"):
            for level in levels:
                print(f"\n  {metric}, level_eyes={level}  (rows scale, columns shift)")
                print("  scale " + "".join(f"{d:>8g}" for d in shifts))
                for s in scales:
                    print(f"  {s:5.2f} " + "".join(f"{pct(table[(round(s, 2), d, level)][metric]):>8}" for d in shifts))
        sq = next(f for f in c["framings"] if f["square_path"])
        b, base = c["best"], c["baseline"]
        print(f"\n  baseline Framing() (the clipped box stretched to 48): all {pct(base['accuracy_all'])}, "
              f"found {pct(base['accuracy_found'])}")
        print(f"  square of the box's longer side (scale 1, shift 0, general path): all {pct(sq['accuracy_all'])}, "
              f"found {pct(sq['accuracy_found'])}")
        print(f"  best: scale {b['scale']}, shift {b['shift']}, level_eyes {b['level_eyes']}: "
              f"all {pct(b['accuracy_all'])}, found {pct(b['accuracy_found'])}; "
              f"over the baseline {pp(c['best_vs_baseline'])}")
        for level, f in c["best_by_level"].items():
            print(f"  best with level_eyes={level}: {pct(f['accuracy_all'])} (scale {f['scale']}, shift {f['shift']})")
        if c["level_gain_mean"] is not None:
            print(f"  levelling the eyes at the same scale and shift: mean {100 * c['level_gain_mean']:+.1f} pp; "
                  + (f"at scale 1, shift 0: {pp(c['level_gain_same_point']['1,0'])}"
                     if "1,0" in c["level_gain_same_point"] else ""))
        if "geometry" in c:
            g = c["geometry"]
            print(f"  geometry: median pasted side / YuNet box longer side {g['median_side_over_box']} "
                  f"(IQR {g['quartiles_side_over_box']}); median (square cy - box cy) / box h "
                  f"{g['median_offset_over_height']} (IQR {g['quartiles_offset_over_height']})")
    if r.get("whole"):
        print(f"\n== Faces sent as whole pictures (n={r['whole_n']}): share answered / accuracy of all")
        print("  detector size  whole-rule used | rule: answered    acc | no rule: answered    acc")
        for name, rows in r["whole"].items():
            for row in rows:
                print(f"  {name:8} {row['size']:4}  {row['whole_picture_used']:15} |       "
                      f"{pct(row['rule']['answered'])} {pct(row['rule']['accuracy_all'])} |          "
                      f"{pct(row['no_rule']['answered'])} {pct(row['no_rule']['accuracy_all'])}")


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scales", type=floats, default=list(SCALES))
    ap.add_argument("--shifts", type=floats, default=list(SHIFTS))
    ap.add_argument("--levels", default="0,1", help="level_eyes values: 0, 1 or 0,1")
    ap.add_argument("--conditions", default="upright,rolled")
    ap.add_argument("--haar-n", type=int, default=None, help="Haar reference on the first N faces (default: all)")
    ap.add_argument("--whole-n", type=int, default=WHOLE_N, help="0: skip the face-crop rule")
    ap.add_argument("--whole-sizes", type=lambda t: [int(v) for v in t.split(",")], default=list(WHOLE_SIZES))
    ap.add_argument("--threads", type=int, default=0, help="OpenCV threads (0: OpenCV's default)")
    ap.add_argument("--json", type=Path, default=Path("/tmp/framing.json"))
    args = ap.parse_args(argv)
    if args.threads:
        cv2.setNumThreads(args.threads)
    levels = [bool(int(v)) for v in args.levels.split(",")]
    framings = grid(args.scales, args.shifts, levels)
    model = load_model(ROOT / "layers" / "model")
    yunet = YuNetDetector(ROOT / "layers" / "detector")
    haar = HaarDetector()
    all_images, all_labels = load_split(DEFAULT_DATA, PUBLIC_TEST)
    images, labels = fixed_sample(all_images, all_labels, args.n, args.seed)
    start = time.perf_counter()
    r = {"n": len(labels), "seed": args.seed, "model_sha256": model.sha256,
         "detector": {"name": yunet.name, "file": yunet.spec.get("file"), "sha256": yunet.spec.get("sha256"),
                      "score_threshold": yunet.score_threshold, "max_side": yunet.max_side,
                      "max_upscale": yunet.max_upscale},
         "grid": {"scales": args.scales, "shifts": args.shifts, "levels": levels},
         "backgrounds": [p.name for p in BACKGROUNDS], "background_side": BACKGROUND_SIDE,
         "sides": list(SIDES), "roll": ROLL,
         "bare_accuracy": round(float((predict(model, list(images)) == labels).mean()), 4)}
    print(f"pasted faces, n={len(labels)}, {len(framings)} framings", flush=True)
    r["pasted"] = pasted(images, labels, model, yunet, haar, backgrounds(), args.seed, framings,
                         args.conditions.split(","), len(labels) if args.haar_n is None else args.haar_n)
    if args.whole_n:
        w_images, w_labels = fixed_sample(all_images, all_labels, args.whole_n, args.seed)
        r["whole_n"] = len(w_labels)
        t = time.perf_counter()
        r["whole"] = whole_pictures(w_images, w_labels, model, {"yunet": yunet, "haar": haar}, args.whole_sizes)
        print(f"  whole pictures: {time.perf_counter() - t:.1f} s", flush=True)
    r["seconds"] = round(time.perf_counter() - start, 1)
    report(r)
    args.json.write_text(json.dumps(r, indent=1))
    print(f"\nwritten {args.json} ({r['seconds']} s)")


if __name__ == "__main__":
    main()
