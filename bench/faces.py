"""The face detectors on the development photos (``make eval-faces``): recall of the
non-hard faces, precision, photos with every face found, and time per photo.

The photos and their boxes are ../shared/data/faces/ (WIDER FACE validation photos and
a few photos without faces, for measuring only: never committed); its own scorer
(score.py beside them) does the matching, so these figures are the ones its README
quotes.  Each photo is decoded as the service decodes it and given to the detector the
service builds from the same settings (emotion.config.Settings, emotion.faces).

    python -m bench.faces --data ../shared/data/faces [--detectors yunet,haar]
                          [--max-sides 1280,1024,896,640] [--json OUT]
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import time
from pathlib import Path

import cv2

from emotion.config import Settings
from emotion.images import decode
from emotion.model import use_available_cpus
from emotion.pipeline import detector_for


def load_scorer(data: Path):
    spec = importlib.util.spec_from_file_location("faces_score", data / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate(settings: Settings, data: Path, truth: dict, scorer) -> dict:
    """One detector setting on every photo: the scorer's totals and the time per photo
    (detection alone, on the decoded photo, as the pipeline calls it)."""
    detector = detector_for(settings)
    totals = dict(tp=0, fp=0, n_easy=0, n_hard=0, hard_matched=0, n_pred=0)
    all_found = with_faces = clean = no_face = 0
    times = []
    for i, name in enumerate(sorted(truth)):
        image = decode((data / "images" / name).read_bytes(), settings.max_image_bytes, settings.max_image_pixels,
                       min_side=detector.max_side)
        bgr = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR)
        grey = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)
        if i == 0:
            detector.detect(bgr, grey)  # the first call prepares the network: init, not a request
        start = time.perf_counter()
        faces = detector.detect(bgr, grey)
        times.append((time.perf_counter() - start) * 1000)
        boxes = [[float(v) for v in f.scaled(1 / image.scale, image.width, image.height).raw] for f in faces]
        row = scorer.score_image(boxes, truth[name]["faces"], 0.4)
        for key in totals:
            totals[key] += row[key]
        if row["n_easy"]:
            with_faces += 1
            all_found += row["tp"] == row["n_easy"]
        if not truth[name]["faces"]:
            no_face += 1
            clean += row["fp"] == 0
    return {
        "detector": settings.detector,
        "max_side": detector.max_side,
        "recall_nonhard": round(totals["tp"] / totals["n_easy"], 4),
        "precision": round(totals["tp"] / max(1, totals["tp"] + totals["fp"]), 4),
        "photos_all_found": all_found,
        "photos_with_faces": with_faces,
        "no_face_photos_clean": f"{clean}/{no_face}",
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(sorted(times)[int(0.95 * (len(times) - 1))], 1),
        **totals,
    }


def table(rows: list[dict]) -> str:
    lines = ["| detector | DETECT_MAX_SIDE | recall (non-hard) | precision | photos with every face found "
             "| no-face photos clean | median ms | p95 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['max_side']} | {r['recall_nonhard']:.3f} ({r['tp']}/{r['n_easy']}) "
                     f"| {r['precision']:.3f} ({r['fp']} false) | {r['photos_all_found']}/{r['photos_with_faces']} "
                     f"| {r['no_face_photos_clean']} | {r['median_ms']} | {r['p95_ms']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/faces")
    parser.add_argument("--detectors", default="yunet,haar")
    parser.add_argument("--max-sides", default="",
                        help="also YuNet at these DETECT_MAX_SIDE values (comma-separated): the speed/recall trade")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    use_available_cpus()
    truth = json.loads((args.data / "boxes.json").read_text())
    scorer = load_scorer(args.data)
    base = Settings.from_env()
    runs = [dataclasses.replace(base, detector=d) for d in args.detectors.split(",") if d]
    runs += [dataclasses.replace(base, detector="yunet", detect_max_side=int(m))
             for m in args.max_sides.split(",") if m]
    rows = []
    for settings in runs:
        rows.append(evaluate(settings, args.data, truth, scorer))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
