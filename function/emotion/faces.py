"""Finding faces with OpenCV's Haar cascade, and cutting them out for the model."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int

    def to_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


class FaceDetector:
    """Haar-cascade face detector, loaded once and reused.

    Large images are downscaled so that their longer side is at most ``max_side``
    before detection; the boxes are mapped back to the original pixels."""

    def __init__(self, max_side: int = 640, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 24):
        path = cv2.data.haarcascades + CASCADE_FILE
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, grey: np.ndarray) -> list[Box]:
        """Boxes of the faces in a grey uint8 image, largest first."""
        height, width = grey.shape
        scale = min(1.0, self.max_side / max(height, width))
        small = grey if scale == 1.0 else cv2.resize(
            grey, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        found = self.cascade.detectMultiScale(small, scaleFactor=self.scale_factor,
                                              minNeighbors=self.min_neighbors,
                                              minSize=(self.min_size, self.min_size))
        boxes = []
        for (x, y, w, h) in (found if len(found) else []):
            x0, y0 = int(round(x / scale)), int(round(y / scale))
            x1, y1 = min(width, int(round((x + w) / scale))), min(height, int(round((y + h) / scale)))
            boxes.append(Box(x0, y0, x1 - x0, y1 - y0))
        return sorted(boxes, key=lambda b: b.width * b.height, reverse=True)


def crop_face(grey: np.ndarray, box: Box, size: int = 48) -> np.ndarray:
    """The face under ``box`` as a size x size grey uint8 crop."""
    face = grey[box.y:box.y + box.height, box.x:box.x + box.width]
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
