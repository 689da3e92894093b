"""Calibrate the served model's confidences: one temperature, fitted on PublicTest.

    python -m training.calibrate [--model-dir layers/model] [--data ...] [--png docs/reliability.png]
                                 [--flip-average]

This is also where the served logits are chosen: with --flip-average each face's logits
are the mean of its and its mirror image's (test-time augmentation: one batch of 2N
faces; for the weights of 2026-12 PublicTest 69.35 -> 70.19 % in fp32, 69.60 -> 69.99 %
in int8, for about 1.9x the classifier's time); without it (the default) one pass.  The
manifest's ``flip_average`` records the choice, which the service follows.

The logits are those of the fp32 ONNX graph as the service runs it (onnxruntime,
``emotion.model.load_model(..., precision="fp32", flip=...).logits``) on all 3,589 PublicTest
faces.  The int8 graph shares the temperature: training.quantize's gate holds its
calibration error to the fp32 graph's, so run it again after calibrating.  One
temperature T > 0 is fitted to them by minimising the negative log-likelihood of
``softmax(logits / T)`` (golden-section search over log T; the NLL is unimodal in T).
T only rescales the logits, so every prediction (the argmax) and every accuracy figure
stays as it was; only the confidences change.

Written: ``flip_average`` and ``calibration`` in manifest.json (the temperature, the expected calibration
error and NLL before and after; every other key kept), which the service's ``predict``
applies, and the reliability diagram before and after, with the faces per bin
(docs/reliability.png).  Printed (JSON): the same figures and, for thresholds 0.30 ..
0.90, the share of faces whose calibrated confidence is below the threshold (those
FALLBACK_MODE=low-confidence sends to Rekognition) and the local accuracy below and
above it.

PublicTest is also the split the weights were selected on, so these figures are
optimistic for new faces; there is no other labelled split here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from training.common import DEFAULT_DATA, ROOT, load_publictest, set_manifest_keys
from emotion.model import WeightsError, load_model, softmax  # noqa: E402  (path set up by training.common)

BINS = 15
THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))  # 0.30, 0.35, ..., 0.90
METHOD = ("temperature scaling: softmax(logits / T), T minimising the NLL of the fp32 ONNX "
          "graph's served logits (flip-averaged when flip_average), golden-section search over log T")


# ---- the measures ------------------------------------------------------------------------

def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE of the top-1 confidence: the faces are put in ``bins`` equal-width bins of
    their top probability ((0, 1/bins], (1/bins, 2/bins], ...; 0 goes to the first),
    and the gaps between each bin's accuracy and its mean confidence are averaged,
    weighted by the share of faces in the bin."""
    counts, accuracy, confidence = reliability(probs, labels, bins)
    n = counts.sum()
    return float(np.sum(counts / max(n, 1) * np.abs(accuracy - confidence)))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS):
    """Per bin of the top-1 confidence: the number of faces, their accuracy and their
    mean confidence (0 for an empty bin)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels)
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    safe = np.maximum(counts, 1)
    accuracy = np.bincount(index, weights=right, minlength=bins) / safe
    confidence = np.bincount(index, weights=conf, minlength=bins) / safe
    return counts, accuracy, confidence


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0,
                    tol: float = 1e-6) -> float:
    """The T in [lo, hi] minimising ``nll(logits, labels, T)``: golden-section search
    over log T (the NLL is convex in 1/T, so unimodal in log T)."""
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return math.exp((a + b) / 2)


def threshold_table(probs: np.ndarray, labels: np.ndarray, thresholds=THRESHOLDS) -> list[dict]:
    """For each threshold: the share of faces whose top confidence is below it (sent to
    Rekognition under FALLBACK_MODE=low-confidence) and the local model's accuracy on
    those faces and on the rest."""
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == labels
    rows = []
    for t in thresholds:
        below = conf < t
        rows.append({"threshold": t, "sent": round(float(below.mean()), 4),
                     "accuracy_below": round(float(right[below].mean()), 4) if below.any() else None,
                     "accuracy_above": round(float(right[~below].mean()), 4) if (~below).any() else None})
    return rows


# ---- the reliability diagram ---------------------------------------------------------------

def draw_reliability(panels: list[tuple[str, np.ndarray, np.ndarray]], title: str = "", subtitle: str = ""):
    """A PIL image with one reliability diagram per (caption, probs, labels): per bin of
    the top confidence, a bar up to the bin's accuracy, the gap to its mean confidence
    framed in red (filled where the confidence is above the accuracy), the diagonal of perfect calibration, and the faces per bin below."""
    from PIL import Image, ImageDraw
    from training.evaluate import _font

    side, left, gap, top, bottom = 420, 70, 90, 100, 150
    width = left + len(panels) * side + (len(panels) - 1) * gap + 40
    height = top + side + bottom
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    f_title, f_label, f_small = _font(20), _font(15), _font(12)
    d.text((width // 2, 14), title, fill="black", font=f_title, anchor="mt")
    if subtitle:
        d.text((width // 2, 44), subtitle, fill=(70, 70, 70), font=f_small, anchor="mt")

    for k, (caption, probs, labels) in enumerate(panels):
        counts, accuracy, confidence = reliability(probs, labels)
        bins = len(counts)
        x0, y0 = left + k * (side + gap), top
        px = lambda v: x0 + v * side  # noqa: E731
        py = lambda v: y0 + (1 - v) * side  # noqa: E731
        d.text((x0 + side // 2, y0 - 26), caption, fill="black", font=f_label, anchor="mm")
        for g in (0.2, 0.4, 0.6, 0.8):  # grid
            d.line([(px(0), py(g)), (px(1), py(g))], fill=(230, 230, 230))
            d.line([(px(g), py(0)), (px(g), py(1))], fill=(230, 230, 230))
        w = side / bins
        for i in range(bins):
            if counts[i] == 0:
                continue
            bx0, bx1 = px(i / bins) + 1, px((i + 1) / bins) - 1
            d.rectangle([bx0, py(accuracy[i]), bx1, py(0)], fill=(66, 133, 200), outline=(33, 80, 140))
            # the gap: filled above an accuracy bar (over-confident), outlined inside one
            # (under-confident), so the blue bar always ends at the bin's accuracy
            lo, hi = sorted((accuracy[i], confidence[i]))
            fill = (240, 160, 150) if confidence[i] > accuracy[i] else None
            d.rectangle([bx0, py(hi), bx1, py(lo)], fill=fill, outline=(200, 50, 40), width=2)
            d.text((bx0 + w / 2 - 1, py(0) + 22), str(int(counts[i])), fill=(70, 70, 70), font=f_small,
                   anchor="mt")
        d.line([(px(0), py(0)), (px(1), py(1))], fill=(60, 60, 60), width=2)  # perfect calibration
        d.rectangle([px(0), py(1), px(1), py(0)], outline="black")
        for v in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
            d.text((px(v), py(0) + 6), f"{v:.1f}", fill="black", font=f_small, anchor="mt")
            d.text((px(0) - 6, py(v)), f"{v:.1f}", fill="black", font=f_small, anchor="rm")
        d.text((px(0) - 6, py(0) + 22), "faces:", fill=(70, 70, 70), font=f_small, anchor="rt")
        d.text((x0 + side // 2, py(0) + 48), "confidence (top-class probability)", fill="black", font=f_label,
               anchor="mt")
        axis = Image.new("RGBA", (side, 22), (255, 255, 255, 0))
        ImageDraw.Draw(axis).text((side // 2, 11), "accuracy", fill="black", font=f_label, anchor="mm")
        rotated = axis.rotate(90, expand=True)
        img.paste(rotated, (int(x0 - 62), y0), rotated)

    # legend
    ly = top + side + 90
    d.rectangle([left, ly, left + 18, ly + 12], fill=(66, 133, 200), outline=(33, 80, 140))
    d.text((left + 26, ly + 6), "accuracy in the bin", fill="black", font=f_small, anchor="lm")
    d.rectangle([left + 190, ly, left + 208, ly + 12], fill=(240, 160, 150), outline=(200, 50, 40))
    d.text((left + 216, ly + 6), "gap to the bin's mean confidence", fill="black", font=f_small, anchor="lm")
    d.line([(left + 450, ly + 6), (left + 480, ly + 6)], fill=(60, 60, 60), width=2)
    d.text((left + 488, ly + 6), "perfect calibration", fill="black", font=f_small, anchor="lm")
    return img


def write_png(path: Path, img) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)


# ---- the command -----------------------------------------------------------------------

def logits_of(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The logits a loaded model (emotion.model.load_model) computes for ``images``, in
    batches of ``batch_size``."""
    return np.concatenate([model.logits(list(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def served_logits(model_dir: Path, images: np.ndarray, flip: bool | None = None):
    """The loaded fp32 model and the logits the service computes with it for ``images``
    (``flip``: with flip averaging; None: as the manifest says)."""
    model = load_model(model_dir, precision="fp32", flip=flip)
    return model, logits_of(model, images)


def calibrate(logits: np.ndarray, labels: np.ndarray) -> dict:
    """The manifest's ``calibration`` for these PublicTest logits and labels."""
    t = fit_temperature(logits, labels)
    return {"temperature": round(t, 4), "fitted_on": "FER2013 PublicTest", "n": int(len(labels)),
            "ece_before": round(expected_calibration_error(softmax(logits), labels), 4),
            "ece_after": round(expected_calibration_error(softmax(logits / np.float32(round(t, 4))), labels), 4),
            "nll_before": round(nll(logits, labels), 4), "nll_after": round(nll(logits, labels, round(t, 4)), 4),
            "bins": BINS, "method": METHOD}


def write_calibration(model_dir: Path, calibration: dict, sha256: str, flip: bool) -> dict:
    """Set ``flip_average`` and ``calibration`` in manifest.json, atomically, keeping every other key."""
    return set_manifest_keys(model_dir, {"flip_average": flip, "calibration": calibration}, {"sha256": sha256})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz with images, labels and usage")
    p.add_argument("--model-dir", type=Path, default=ROOT / "layers" / "model", help="manifest.json + ONNX graph")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "reliability.png",
                   help="the reliability diagram (default docs/reliability.png)")
    p.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=False,
                   help="serve each face's logits averaged with its mirror image's (default: off)")
    p.add_argument("--dry-run", action="store_true", help="print the figures; write neither manifest nor PNG")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        images, labels = load_publictest(args.data)
    except (OSError, ValueError) as exc:
        sys.exit(str(exc))
    try:
        model, logits = served_logits(args.model_dir, images, args.flip_average)
    except WeightsError as exc:
        sys.exit(f"refused: {exc}")

    cal = calibrate(logits, labels)
    before, after = softmax(logits), softmax(logits / np.float32(cal["temperature"]))
    report = {"model_dir": str(args.model_dir), "sha256": model.sha256, "flip_average": args.flip_average,
              "calibration": cal,
              "accuracy": round(float((logits.argmax(1) == labels).mean()), 4),
              "mean_confidence_before": round(float(before.max(1).mean()), 4),
              "mean_confidence_after": round(float(after.max(1).mean()), 4),
              "thresholds": threshold_table(after, labels),
              "thresholds_uncalibrated": threshold_table(before, labels),
              "note": "PublicTest also selected the weights: these figures are optimistic for new faces"}
    if not args.dry_run:
        write_calibration(args.model_dir, cal, model.sha256, args.flip_average)
        img = draw_reliability(
            [(f"as trained (T = 1): ECE {cal['ece_before']:.3f}", before, labels),
             (f"calibrated (T = {cal['temperature']:.3f}): ECE {cal['ece_after']:.3f}", after, labels)],
            title=f"Reliability on FER2013 PublicTest (n={len(labels)}, {BINS} bins)",
            subtitle=f"served ONNX graph{', flip-averaged' if args.flip_average else ''}, accuracy "
                     f"{report['accuracy']:.1%}; the temperature is fitted on "
                     f"these same faces.  sha256 {model.sha256[:12]}")
        write_png(args.png, img)
        report["png"] = str(args.png)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
