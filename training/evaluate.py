"""Evaluate the shipped weights (layers/model/) on FER2013 or any npz of its format.

    python -m training.evaluate                           # PublicTest, JSON + docs/confusion_matrix.png
    python -m training.evaluate --split all --sample 500  # a quick look at 500 fixed rows
    python -m training.evaluate --update-manifest         # rewrite manifest.json's metrics

The fp16 weights are loaded through ``training.network.load_network`` (sha256 checked
against the manifest) and normalised by ``emotion.model.normalise``, i.e. by the
manifest's ``input``, exactly as the service does.  The service runs the same weights as
the ONNX graphs beside them, through onnxruntime; tests/test_optimisations.py checks that
the fp32 graph agrees with them within 1e-4 on real faces (the int8 graph is held to its
gate against the fp32 one: tests/test_precision.py).  The npz needs ``images`` (N,48,48) uint8 and ``labels`` (N,)
FER2013 ids; without a ``usage`` array every row is used.

Printed (JSON): accuracy, macro-F1, per-class precision and recall and the confusion
matrix (rows: truth, columns: prediction), without ("plain", what the service computes)
and with horizontal-flip test-time averaging ("flip").  The PNG shows the plain one.

--update-manifest recomputes the manifest's ``metrics`` from the shipped fp16 weights on
all of PublicTest (plain and flip) plus ``metrics.sample`` (plain, on a fixed 500-row
PublicTest sample, which tests/test_model.py reproduces) and rewrites manifest.json
atomically; the weights and their sha256 are untouched.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from training.common import (CLASSES, DEFAULT_DATA, PUBLIC_TEST, ROOT, TRAINING, evaluate_loaded, ferplus_majority,
                             fixed_sample, has_usage, load_split, update_manifest)
from emotion.model import WeightsError  # noqa: E402  (path set up by training.common)
from training.network import load_network  # noqa: E402

SPLITS = {"public-test": PUBLIC_TEST, "training": TRAINING, "all": None}
SPLIT_NAMES = {"public-test": "PublicTest", "training": "Training", "all": "all rows"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="npz with images, labels (and usage)")
    p.add_argument("--model-dir", type=Path, default=ROOT / "layers" / "model", help="manifest.json + weights")
    p.add_argument("--split", choices=SPLITS, default="public-test", help="rows of the npz (default public-test)")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "confusion_matrix.png",
                   help="where the confusion-matrix heatmap goes (default docs/confusion_matrix.png)")
    p.add_argument("--no-png", action="store_true", help="write no PNG")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="evaluate only N fixed rows of the split (training.common.fixed_sample)")
    p.add_argument("--update-manifest", action="store_true",
                   help="recompute the manifest's metrics (all of PublicTest + the fixed sample) and rewrite it")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--ferplus", type=Path, default=None, metavar="VOTES_NPZ",
                   help="also report accuracy against FER+'s majority labels (default: the votes beside --data, "
                        "when they are there)")
    return p.parse_args(argv)


# ---- the heatmap ---------------------------------------------------------------------

# matplotlib's "Blues", a few stops of it: white -> dark blue.
_BLUES = [(0.0, (247, 251, 255)), (0.25, (198, 219, 239)), (0.5, (107, 174, 214)),
          (0.75, (33, 113, 181)), (1.0, (8, 48, 107))]


def _blue(t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0)
    for (t0, c0), (t1, c1) in zip(_BLUES, _BLUES[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return tuple(round(a + (b - a) * f) for a, b in zip(c0, c1))
    return _BLUES[-1][1]


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def draw_confusion(confusion, classes=CLASSES, title: str = "", subtitle: str = ""):
    """A PIL image of the confusion matrix: rows are the true class, columns the
    predicted one; each cell shows the count and the row-normalised percentage
    (the share of that true class), coloured by the percentage."""
    from PIL import Image, ImageDraw

    cm = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    row_sums = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sums, out=np.zeros(cm.shape, float), where=row_sums > 0)

    cell, left, top, right, bottom = 92, 150, 120, 110, 70
    width, height = left + k * cell + right, top + k * cell + bottom
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    f_title, f_label, f_count, f_pct, f_small = _font(20), _font(15), _font(17), _font(13), _font(12)

    d.text((width // 2, 14), title, fill="black", font=f_title, anchor="mt")
    if subtitle:
        d.text((width // 2, 44), subtitle, fill=(70, 70, 70), font=f_small, anchor="mt")
    d.text((left + k * cell // 2, top - 34), "predicted", fill="black", font=f_label, anchor="mm")
    for j, name in enumerate(classes):
        d.text((left + j * cell + cell // 2, top - 10), name, fill="black", font=f_small, anchor="mb")
    # the axis title of the rows, written vertically
    axis = Image.new("RGBA", (k * cell, 24), (255, 255, 255, 0))
    ImageDraw.Draw(axis).text((k * cell // 2, 12), "true", fill="black", font=f_label, anchor="mm")
    img.paste(axis.rotate(90, expand=True), (10, top), axis.rotate(90, expand=True))

    for i, name in enumerate(classes):
        y0 = top + i * cell
        d.text((left - 10, y0 + cell // 2), name, fill="black", font=f_small, anchor="rm")
        d.text((left + k * cell + 8, y0 + cell // 2), f"n={int(row_sums[i, 0])}", fill=(70, 70, 70),
               font=f_small, anchor="lm")
        for j in range(k):
            x0 = left + j * cell
            colour = _blue(share[i, j])
            d.rectangle([x0, y0, x0 + cell, y0 + cell], fill=colour, outline=(255, 255, 255))
            ink = "white" if share[i, j] > 0.45 else "black"
            d.text((x0 + cell // 2, y0 + cell // 2 - 10), str(int(cm[i, j])), fill=ink, font=f_count, anchor="mm")
            d.text((x0 + cell // 2, y0 + cell // 2 + 13), f"{100 * share[i, j]:.1f}%", fill=ink, font=f_pct,
                   anchor="mm")
    # the diagonal framed
    for i in range(k):
        x0, y0 = left + i * cell, top + i * cell
        d.rectangle([x0 + 1, y0 + 1, x0 + cell - 1, y0 + cell - 1], outline=(230, 85, 13), width=2)

    # colour scale: 0 % .. 100 % of the true class
    bar_x0, bar_y = left, top + k * cell + 22
    bar_w = k * cell
    for x in range(bar_w):
        d.line([(bar_x0 + x, bar_y), (bar_x0 + x, bar_y + 12)], fill=_blue(x / (bar_w - 1)))
    d.rectangle([bar_x0, bar_y, bar_x0 + bar_w, bar_y + 12], outline=(150, 150, 150))
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        d.text((bar_x0 + round(frac * bar_w), bar_y + 16), f"{round(frac * 100)}%", fill=(70, 70, 70),
               font=f_small, anchor="mt")
    d.text((bar_x0 - 10, bar_y + 6), "share of row", fill=(70, 70, 70), font=f_small, anchor="rm")
    return img


def write_png(path: Path, confusion, title: str, subtitle: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    draw_confusion(confusion, title=title, subtitle=subtitle).save(tmp, format="PNG", optimize=True)
    tmp.replace(path)


def to_json(obj) -> str:
    """Indented JSON with each list of numbers (a confusion-matrix row) on one line."""
    return re.sub(r"\[\s+([-0-9.e, \n]+?)\s+\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
                  json.dumps(obj, indent=2))


# ---- the command -----------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if not args.data.exists():
        sys.exit(f"no data at {args.data} (FER2013 npz: images, labels, usage; see ../shared/data/fer2013/README)")
    try:
        loaded = load_network(args.model_dir)  # the sha256 is checked against the manifest
    except WeightsError as exc:
        sys.exit(f"refused: {exc}")
    usage = has_usage(args.data)
    if args.update_manifest and not usage:
        sys.exit(f"--update-manifest needs PublicTest rows; {args.data} has no usage array")

    images, labels = load_split(args.data, SPLITS[args.split])
    split = SPLIT_NAMES[args.split] if usage else "all rows (no usage array)"
    if args.sample:
        images, labels = fixed_sample(images, labels, n=args.sample)
        split += f", fixed sample of {len(labels)}"
    if len(labels) == 0:
        sys.exit(f"{args.data}: no rows in split {args.split}")
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        sys.exit(f"{args.data}: labels must be FER2013 ids 0..{len(CLASSES) - 1}")

    result = evaluate_loaded(loaded, images, labels)
    report = {"model_dir": str(args.model_dir), "weights": loaded.manifest["weights"], "sha256": loaded.sha256,
              "input": loaded.manifest["input"], "data": str(args.data), "split": split, "n": int(len(labels)),
              "classes": list(CLASSES), "plain": result["plain"], "flip": result["flip"]}
    votes_path = args.ferplus or args.data.with_name("ferplus_votes_train_val.npz")
    if usage and not args.sample and votes_path.exists():
        with np.load(args.data) as data:
            index = data["index"] if SPLITS[args.split] is None else data["index"][data["usage"] == SPLITS[args.split]]
        report["ferplus_majority"] = ferplus_majority(result["predicted"], index, votes_path)

    if not args.no_png:
        p, f = result["plain"], result["flip"]
        write_png(args.png, p["confusion"],
                  title=f"{args.data.name}, {split}: accuracy {p['accuracy']:.1%}  (n={p['n']})",
                  subtitle=f"macro-F1 {p['macro_f1']:.3f}; with flip averaging: accuracy {f['accuracy']:.1%}, "
                           f"macro-F1 {f['macro_f1']:.3f}.  Rows: true class; cells: count, % of the row.  "
                           f"sha256 {loaded.sha256[:12]}")
        report["png"] = str(args.png)

    if args.update_manifest:
        if args.split == "public-test" and not args.sample:
            pt_images, pt_labels, full = images, labels, result  # the same rows: no second pass
        else:
            (pt_images, pt_labels), full = load_split(args.data, PUBLIC_TEST), None
        manifest = update_manifest(args.model_dir, pt_images, pt_labels, full=full, data=args.data,
                                   loaded=loaded)
        report["manifest"] = {"path": str(args.model_dir / "manifest.json"), "metrics": manifest["metrics"]}

    print(to_json(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
