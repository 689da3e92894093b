"""The peer of issue #5: the `fer` package (mini-Xception behind the same Haar cascade)
on the benchmark's photos.  Prints one JSON object.

`fer` needs TensorFlow, so it lives in its own virtual environment (`make fer-venv`
makes .venv-fer), never in the runtime's; bench.run runs this module with that
environment's interpreter when it exists.  Only bench.photos and bench.timing are
imported from this repository (OpenCV, numpy and Pillow come with `fer`)."""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from importlib.metadata import version

import cv2
import numpy as np
from PIL import Image

from bench.photos import photos
from bench.timing import summary, timings


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args(argv)
    from fer.fer import FER  # fer 25.x no longer exports FER from the package itself
    detector = FER()  # its defaults: the cascade at full size, scaleFactor 1.1, minSize 50
    out = {"version": version("fer"), "opencv": cv2.__version__, "cv2_threads": cv2.getNumThreads(), "photos": {}}
    for name, photo in photos().items():
        data = photo["data"]

        def decoded():  # the BGR pixels fer expects
            return cv2.cvtColor(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), cv2.COLOR_RGB2BGR)

        def from_bytes():
            return detector.detect_emotions(decoded())

        t0 = time.perf_counter()
        faces = len(from_bytes())
        # fer scans the full-size image: about 1.5 s for 12 megapixels, so fewer calls there
        reps = min(args.reps, max(5, int(10_000 / ((time.perf_counter() - t0) * 1000))))
        row = {"faces": faces, "faces_in_photo": photo["faces"], "from_bytes": summary(timings(from_bytes, reps, warmup=1))}
        if name == "640x480":  # the photo of the target: where fer's time goes
            bgr = decoded()
            row["detect_emotions"] = summary(timings(lambda: detector.detect_emotions(bgr), reps))
            row["find_faces"] = summary(timings(lambda: detector.find_faces(bgr), reps))
        out["photos"][name] = row
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
