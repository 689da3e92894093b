"""The photo with every face's box, label and confidence drawn on it, as a JPEG.

Sizes follow the picture, so the labels read the same on a 320-pixel thumbnail and on
a 12-megapixel photo: the output is at most MAX_SIDE pixels on its longer side (a
12-megapixel photo's JPEG would not fit a Lambda response), lines are about 0.4 % of
its shorter side thick, and a label's letters are 30 % of its face's height, kept
between 2 % and 4 % of the picture's shorter side (and never under 12 pixels)."""
from __future__ import annotations

import cv2
import numpy as np

from emotion.images import DecodedImage

MAX_SIDE = 2048
QUALITY = 85
MIN_TEXT_PX = 12
# One colour per label, RGB: the Okabe-Ito palette, told apart with every kind of
# colour blindness; neutral grey, Rekognition's extra labels sky blue and white.
COLOURS = {
    "ANGRY": "#D55E00", "DISGUST": "#009E73", "FEAR": "#CC79A7", "HAPPY": "#F0E442",
    "SAD": "#0072B2", "SURPRISE": "#E69F00", "NEUTRAL": "#BBBBBB",
    "CONFUSED": "#56B4E9", "UNKNOWN": "#FFFFFF",
}
FONT = cv2.FONT_HERSHEY_DUPLEX
_FONT_PX = cv2.getTextSize("Hg", FONT, 1.0, 1)[0][1]  # cap height at scale 1


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def colour_of(emotion: str) -> tuple[int, int, int]:
    return rgb(COLOURS.get(emotion, COLOURS["UNKNOWN"]))


def label_of(face: dict) -> str:
    return f"{face['emotion'].capitalize()} {round(face['confidence'] * 100)}%"


def text_px(face_height: float, short_side: int) -> int:
    """The letters' height in pixels for a face ``face_height`` pixels tall."""
    low = max(MIN_TEXT_PX, round(0.02 * short_side))
    high = max(MIN_TEXT_PX, round(0.04 * short_side))
    return int(min(max(round(0.3 * face_height), low), high))


def line_px(short_side: int) -> int:
    return max(2, round(short_side / 250))


def draw(rgb_pixels: np.ndarray, faces: list[dict], scale: float) -> np.ndarray:
    """A copy of ``rgb_pixels`` with the faces drawn; their boxes are in pixels of the
    picture, ``scale`` pixels of ``rgb_pixels`` each."""
    out = np.ascontiguousarray(rgb_pixels).copy()
    height, width = out.shape[:2]
    short = min(height, width)
    thick = line_px(short)
    # Largest first, so a small face's label is drawn over a large face's box, not under it.
    for face in sorted(faces, key=lambda f: f["box"]["width"] * f["box"]["height"], reverse=True):
        box = face["box"]
        x0, y0 = int(round(box["x"] * scale)), int(round(box["y"] * scale))
        x1 = min(width - 1, int(round((box["x"] + box["width"]) * scale)))
        y1 = min(height - 1, int(round((box["y"] + box["height"]) * scale)))
        colour = colour_of(face["emotion"])
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick, cv2.LINE_AA)
        size = text_px(y1 - y0, short)
        font_scale = size / _FONT_PX
        weight = max(1, round(size / 12))
        text = label_of(face)
        (tw, th), base = cv2.getTextSize(text, FONT, font_scale, weight)
        pad = max(2, size // 4)
        label_h = th + base + 2 * pad
        # Above the box when it fits, else inside its top edge; never off the picture.
        top = y0 - label_h if y0 - label_h >= 0 else min(y0, height - label_h)
        left = min(max(0, x0 - thick // 2), max(0, width - tw - 2 * pad))
        cv2.rectangle(out, (left, max(0, top)), (left + tw + 2 * pad, max(0, top) + label_h), colour, cv2.FILLED)
        ink = (0, 0, 0) if sum(c * w for c, w in zip(colour, (0.299, 0.587, 0.114))) > 140 else (255, 255, 255)
        cv2.putText(out, text, (left + pad, max(0, top) + pad + th), FONT, font_scale, ink, weight, cv2.LINE_AA)
    return out


def annotate(image: DecodedImage, faces: list[dict], max_side: int = MAX_SIDE, quality: int = QUALITY) -> bytes:
    """The upright photo, at most ``max_side`` pixels long, with ``faces`` (an answer's
    faces, boxes in the photo's pixels) drawn on it: JPEG bytes."""
    pixels = image.rgb
    longer = max(pixels.shape[:2])
    if longer > max_side:
        factor = max_side / longer
        size = (max(1, round(pixels.shape[1] * factor)), max(1, round(pixels.shape[0] * factor)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)  # at least 1 px: a 1x40000 photo
    drawn = draw(pixels, faces, pixels.shape[1] / image.width)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB array
        raise RuntimeError("JPEG encoding failed")
    return jpeg.tobytes()
