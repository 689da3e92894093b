"""The benchmark's photos, made from the sample images in events/images/ (always the
same bytes for the same inputs, so figures from different runs are comparable)."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "events" / "images"
# A real photo with many faces of mixed sizes: a WIDER FACE validation photo of the
# development set beside the checkout (for measuring only; never committed), 11 faces
# clearly visible, 22 to 248 px tall.
CROWD = ROOT.parent / "shared" / "data" / "faces" / "images" / "13_Interview_13_Interview_Interview_Sequences_13_717.jpg"


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _portrait(width: int, height: int) -> bytes:
    """The astronaut portrait scaled to the photo's height, the sides filled by
    mirroring its edges: one face, a photo of exactly width x height."""
    rgb = np.asarray(Image.open(IMAGES / "astronaut.jpg").convert("RGB"))
    rgb = cv2.resize(rgb, (height, height), interpolation=cv2.INTER_AREA if height < rgb.shape[0] else cv2.INTER_CUBIC)
    left = (width - height) // 2
    return _jpeg(cv2.copyMakeBorder(rgb, 0, 0, left, width - height - left, cv2.BORDER_REFLECT))


def photos() -> dict[str, dict]:
    """name -> {"data": JPEG (or PNG) bytes, "faces": faces in it, "label": what it is,
    and "min_found" where the service need not find them all};
    the crowd photo only when the development set is beside the checkout."""
    crowd = {"crowd": {"data": CROWD.read_bytes(), "faces": 11, "min_found": 10,
                       "label": "eleven faces of 22-248 px, 1024x735 (WIDER FACE val, ../shared)"}} if CROWD.exists() else {}
    return {
        "640x480": {"data": _portrait(640, 480), "faces": 1, "label": "one face, 640x480"},
        "1920x1080": {"data": _portrait(1920, 1080), "faces": 1, "label": "one face, 1920x1080"},
        "4032x3024": {"data": _portrait(4032, 3024), "faces": 1, "label": "one face, 12 megapixels (a phone's photo)"},
        "group": {"data": (IMAGES / "group.jpg").read_bytes(), "faces": 3, "label": "three faces, 1280x720"},
        "no-face": {"data": (IMAGES / "coffee.jpg").read_bytes(), "faces": 0, "label": "no face, 600x400"},
        "face crop": {"data": (IMAGES / "astronaut-face.png").read_bytes(), "faces": 1,
                      "label": "a face crop, 48x48 grey PNG (FER2013's format)"},
        **crowd,
    }
