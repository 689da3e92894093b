"""Finding faces with OpenCV's Haar cascade, and cutting them out for the model."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"
# A picture that is itself a face crop (FER2013's are 48x48 crops) is nearly square ...
FACE_CROP_MAX_ASPECT = 1.3
# ... and the face in it fills at least this share of its shorter side.
FACE_CROP_MIN_FILL = 0.6


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int

    def to_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}

    def scaled(self, factor: float, width: int, height: int) -> "Box":
        """This box in a copy of its image ``factor`` times as large, clipped to that
        copy's ``width`` x ``height``."""
        x0, y0 = int(round(self.x * factor)), int(round(self.y * factor))
        x1 = min(width, int(round((self.x + self.width) * factor)))
        y1 = min(height, int(round((self.y + self.height) * factor)))
        return Box(x0, y0, x1 - x0, y1 - y0)


class FaceDetector:
    """Haar-cascade face detector, loaded once and reused.

    Detection runs in up to two passes over downscaled copies of the image (the boxes
    are mapped back to the original pixels).  The fast pass looks at a copy whose
    longer side is ``fast_side`` with a coarse ``fast_scale_factor``: it finds the faces
    that fill a good part of the photo (at least ``min_size / fast_side`` of its longer
    side, 7.5 % by default) in a fraction of the time.  Only when it finds none does the
    full pass look again at ``max_side`` with ``scale_factor``, for smaller faces.
    ``fast_side=0`` turns the fast pass off."""

    def __init__(self, max_side: int = 640, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 24, fast_side: int = 320, fast_scale_factor: float = 1.2):
        path = cv2.data.haarcascades + CASCADE_FILE
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")
        self.passes = [(max_side, scale_factor)]
        if 0 < fast_side < max_side:
            self.passes.insert(0, (fast_side, fast_scale_factor))
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, grey: np.ndarray) -> list[Box]:
        """Boxes of the faces in a grey uint8 image, largest first."""
        for max_side, scale_factor in self.passes:
            boxes = self.detect_at(grey, max_side, scale_factor)
            if boxes:
                return boxes
        return []

    def detect_at(self, grey: np.ndarray, max_side: int, scale_factor: float) -> list[Box]:
        """One pass: the image downscaled to a longer side of at most ``max_side``."""
        height, width = grey.shape
        scale = min(1.0, max_side / max(height, width))
        small = grey if scale == 1.0 else _resized(grey, scale)
        found = self.cascade.detectMultiScale(small, scaleFactor=scale_factor,
                                              minNeighbors=self.min_neighbors,
                                              minSize=(self.min_size, self.min_size))
        boxes = [Box(int(x), int(y), int(w), int(h)).scaled(1 / scale, width, height)
                 for (x, y, w, h) in (found if len(found) else [])]
        return sorted(boxes, key=lambda b: b.width * b.height, reverse=True)

    def face_crop(self, grey: np.ndarray, boxes: list[Box], max_side: int) -> Box | None:
        """The whole picture as the one face, when the picture is a face crop rather than
        a photo: nearly square, and either the largest face found in it fills most of it,
        or no face was found and the picture is at most ``max_side`` pixels (FER2013's
        are 48x48), or a second look, with a border around the picture, finds a face
        filling it.  The cascade rarely finds a face that touches the picture's borders
        (it needs the windows around the face as well), so in most tight crops
        ``detect`` finds none; and the whole crop is the framing the model was trained
        on.  ``max_side=0``: never."""
        height, width = grey.shape
        if max_side <= 0 or max(width, height) > FACE_CROP_MAX_ASPECT * min(width, height):
            return None
        if boxes:
            filled = boxes[0].width >= FACE_CROP_MIN_FILL * min(width, height)
        else:
            filled = max(width, height) <= max_side or self._face_filling(grey)
        return Box(0, 0, width, height) if filled else None

    def _face_filling(self, grey: np.ndarray, side: int = 96) -> bool:
        """Whether a face fills the picture: the cascade on the picture at ``side``
        pixels, with a black border of half that around it, for faces at least
        FACE_CROP_MIN_FILL of its shorter side (a few large windows: about 3 ms)."""
        small = _resized(grey, side / max(grey.shape))
        border = side // 2
        framed = cv2.copyMakeBorder(small, border, border, border, border, cv2.BORDER_CONSTANT, value=0)
        least = int(FACE_CROP_MIN_FILL * min(small.shape))
        return len(self.cascade.detectMultiScale(framed, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                                 minSize=(least, least))) > 0


def _resized(grey: np.ndarray, scale: float) -> np.ndarray:
    """``grey`` scaled by ``scale`` (INTER_AREA), each side at least one pixel."""
    height, width = grey.shape
    return cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


def crop_face(grey: np.ndarray, box: Box, size: int = 48) -> np.ndarray:
    """The face under ``box`` as a size x size grey uint8 crop."""
    face = grey[box.y:box.y + box.height, box.x:box.x + box.width]
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
