"""How many photos would reach Amazon Rekognition under each FALLBACK_MODE, measured on
the development photos (../shared/data/faces, never committed): the pipeline runs with
the fallback off and counts the photos where it found no face (FALLBACK_MODE=no-face
asks Rekognition about those) and those where no face was found or the surest face is
under CONFIDENCE_THRESHOLD (low-confidence).

    python -m bench.fallback [--data ../shared/data/faces]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from emotion.config import Settings
from emotion.errors import InputError
from emotion.pipeline import Pipeline

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def measure(data: Path = DEFAULT_DATA) -> dict | None:
    photos = sorted(p for p in (data / "images").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        return None
    settings = dataclasses.replace(Settings.from_env(), fallback_mode="off")
    pipeline = Pipeline(settings)
    no_face = unsure = unreadable = 0
    for path in photos:
        try:
            faces = pipeline.analyse(path.read_bytes())["faces"]
        except InputError:
            unreadable += 1
            continue
        no_face += not faces
        unsure += not faces or max(f["confidence"] for f in faces) < settings.confidence_threshold
    return {"photos": len(photos), "unreadable": unreadable, "no_face": no_face, "low_confidence": unsure,
            "confidence_threshold": settings.confidence_threshold}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    print(json.dumps(measure(p.parse_args(argv).data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
