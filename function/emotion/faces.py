"""Finding faces (OpenCV's YuNet CNN by default, or the prototype's Haar cascade), and
cutting them out for the model."""
from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"
# A picture that is itself a face crop (FER2013's are 48x48 crops) is nearly square ...
FACE_CROP_MAX_ASPECT = 1.3
# ... and the face in it fills at least this share of its shorter side.
FACE_CROP_MIN_FILL = 0.6
# YuNet's five landmarks, in the order it returns them ("right" is the person's right,
# on the left of the picture).
LANDMARKS = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")
# YuNet's coarse pass: the photo at this longer side, for faces that fill much of it
# (a large face can be missed at the main pass's scale); a box it finds is kept at
# this score or more (chosen on the development set, see BENCHMARKS.md).
COARSE_SIDE = 320
# YuNet's smallest sound input side: under it, it can answer garbage (infinite or
# astronomically large boxes with score 1.0; found by make fuzz).
MIN_INPUT = 32
COARSE_SCORE = 0.8
# Each detector's main pass when the settings leave it open (0): the longer side it
# looks at, and how much a smaller photo may be enlarged to get there.  YuNet finds
# faces down to about 20 px at its input, so a 1024 px photo is looked at 1.25x
# enlarged (BENCHMARKS.md); the cascade at the photo's own size, 1024 px at most (it
# is slow, and enlarging does not help it).
DEFAULT_PASSES = {"yunet": (1280, 1.25), "haar": (1024, 1.0)}
DETECTORS = tuple(DEFAULT_PASSES)


class DetectorError(RuntimeError):
    """The face detector's model file is missing, corrupt, or the setting is unknown."""


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
        return _clipped(self.x * factor, self.y * factor, self.width * factor, self.height * factor, width, height)


@dataclass(frozen=True)
class Face:
    """One face found: its box (clipped to the picture), YuNet's five landmarks as
    (x, y) pixels in LANDMARKS order and its score (None from the Haar cascade), and
    the box as the detector saw it, before clipping (``raw``: x, y, w, h as floats),
    which framing uses."""

    box: Box
    raw: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...] | None = None
    score: float | None = None

    def scaled(self, factor: float, width: int, height: int) -> "Face":
        """This face in a copy of its image ``factor`` times as large (``width`` x
        ``height``)."""
        x, y, w, h = (v * factor for v in self.raw)
        marks = None if self.landmarks is None else tuple((px * factor, py * factor) for px, py in self.landmarks)
        return Face(_clipped(x, y, w, h, width, height), (x, y, w, h), marks, self.score)

    def landmarks_dict(self) -> dict | None:
        if self.landmarks is None:
            return None
        return {name: [round(px, 1), round(py, 1)] for name, (px, py) in zip(LANDMARKS, self.landmarks)}


def _clipped(x: float, y: float, w: float, h: float, width: int, height: int) -> Box:
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0))


@dataclass(frozen=True)
class Framing:
    """How a detector's box becomes the model's square crop: a square of ``scale``
    times the box's longer side, its centre ``shift`` box heights below the box's
    centre, turned so that the eyes are level when ``level_eyes`` (and the detector
    gives landmarks).  ``scale=None``: the box itself, resized to the square (the
    prototype's crop; the cascade's boxes are square already)."""

    scale: float | None = None
    shift: float = 0.0
    level_eyes: bool = False


class Detector:
    """What both detectors share: the main pass's scale, the smallest face kept, and the
    face-crop rule.  ``detect`` returns faces in the pixels of the image it was given,
    largest first."""

    name = ""
    framing = Framing()

    def __init__(self, max_side: int, max_upscale: float, min_face: int):
        self.max_side = max_side
        self.max_upscale = max_upscale
        self.min_face = min_face

    def scale_for(self, width: int, height: int) -> float:
        """The main pass's scale: the longer side to ``max_side``, but never enlarged by
        more than ``max_upscale``."""
        return min(self.max_upscale, self.max_side / max(width, height))

    def detect(self, bgr: np.ndarray, grey: np.ndarray) -> list[Face]:
        raise NotImplementedError

    def _kept(self, faces: list[Face]) -> list[Face]:
        faces = [f for f in faces if f.box.height >= self.min_face and f.box.width > 0]
        return sorted(faces, key=lambda f: f.box.width * f.box.height, reverse=True)

    def face_crop(self, bgr: np.ndarray, grey: np.ndarray, faces: list[Face], max_side: int) -> Box | None:
        """The whole picture as the one face, when the picture is a face crop rather than
        a photo: nearly square, and either the largest face found in it fills most of it,
        or no face was found and the picture is at most ``max_side`` pixels (FER2013's
        are 48x48), or a second look, with a border around the picture, finds a face
        filling it.  A detector rarely finds a face that touches the picture's borders
        (it needs what is around the face as well), so in most tight crops ``detect``
        finds none; and the whole crop is the framing the model was trained on.
        ``max_side=0``: never."""
        height, width = grey.shape
        if max_side <= 0 or max(width, height) > FACE_CROP_MAX_ASPECT * min(width, height):
            return None
        if faces:
            filled = faces[0].box.width >= FACE_CROP_MIN_FILL * min(width, height)
        else:
            filled = max(width, height) <= max_side or self._face_filling(bgr, grey)
        return Box(0, 0, width, height) if filled else None

    def _face_filling(self, bgr: np.ndarray, grey: np.ndarray) -> bool:
        raise NotImplementedError


class YuNetDetector(Detector):
    """YuNet (cv2.FaceDetectorYN), loaded once from its ONNX file, checked against the
    sha256 that ``detector.json`` beside it names.

    Two passes, their boxes merged by non-maximum suppression: the main pass at
    ``scale_for`` (small faces), and a coarse pass at COARSE_SIDE (faces that fill much
    of the photo).  Boxes, landmarks and scores are mapped back to the image's pixels."""

    name = "yunet"
    # The box-to-crop mapping that classifies best (measured: BENCHMARKS.md, "Framing").
    framing = Framing(scale=0.9, shift=0.0, level_eyes=True)

    def __init__(self, directory: Path | str, max_side: int = 1280, max_upscale: float = 1.25,
                 min_face: int = 16, score_threshold: float = 0.65, nms_threshold: float = 0.3):
        super().__init__(max_side, max_upscale, min_face)
        spec, data = load_detector_file(directory)
        self.spec = spec
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        # One network for each pass: OpenCV re-shapes a network whenever its input size
        # changes (about 10 ms at 1280 px), so each pass keeps its own, and photos of
        # the same size (a phone's, a camera's) reuse the main one as it is.
        try:
            self._nets = {role: cv2.FaceDetectorYN.create("onnx", data, np.zeros(0, np.uint8), (320, 320),
                                                          score_threshold, nms_threshold, 5000)
                          for role in ("main", "coarse", "look")}
        except cv2.error as exc:
            raise DetectorError(f"OpenCV cannot read the face detector {spec['file']}: {exc}") from exc
        self._sizes = dict.fromkeys(self._nets, (320, 320))
        self._lock = threading.Lock()

    def _run(self, bgr: np.ndarray, scale: float, threshold: float, role: str = "main") -> list[tuple[np.ndarray, float]]:
        """YuNet (the network of pass ``role``) on ``bgr`` scaled by ``scale``: rows (x,
        y, w, h, 10 landmark coordinates, score) in ``bgr``'s pixels, with their score,
        at ``threshold`` or more."""
        height, width = bgr.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        scale_back = width / size[0]
        image = bgr if size == (width, height) else cv2.resize(
            bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if min(size) < MIN_INPUT:  # a black margin on the right and bottom moves no box
            image = cv2.copyMakeBorder(image, 0, max(0, MIN_INPUT - size[1]), 0, max(0, MIN_INPUT - size[0]),
                                       cv2.BORDER_CONSTANT, value=0)
            size = (image.shape[1], image.shape[0])
        net = self._nets[role]
        with self._lock:  # a network runs one image at a time (local.serve has threads)
            if size != self._sizes[role]:
                net.setInputSize(size)
                self._sizes[role] = size
            net.setScoreThreshold(threshold)
            _, rows = net.detect(image)
        if rows is None:
            return []
        rows = rows.astype(np.float64)
        # Only boxes that could be on the picture: a garbage row never reaches the crop.
        rows = rows[np.isfinite(rows).all(axis=1) & (np.abs(rows[:, :4]) <= 4 * max(size)).all(axis=1)]
        rows[:, :14] *= scale_back
        return [(row, float(row[14])) for row in rows]

    def detect(self, bgr: np.ndarray, grey: np.ndarray | None = None) -> list[Face]:
        height, width = bgr.shape[:2]
        scale = self.scale_for(width, height)
        rows = self._run(bgr, scale, self.score_threshold)
        coarse = COARSE_SIDE / max(width, height)
        if coarse < scale * 0.75:
            rows += self._run(bgr, coarse, COARSE_SCORE, "coarse")
        if not rows:
            return []
        keep = cv2.dnn.NMSBoxes([[float(v) for v in r[:4]] for r, _ in rows], [s for _, s in rows],
                                0.0, self.nms_threshold)
        faces = []
        for i in np.asarray(keep, dtype=int).reshape(-1):
            row, score = rows[i]
            x, y, w, h = (float(v) for v in row[:4])
            marks = tuple((float(row[4 + 2 * k]), float(row[5 + 2 * k])) for k in range(5))
            faces.append(Face(_clipped(x, y, w, h, width, height), (x, y, w, h), marks, round(score, 4)))
        return self._kept(faces)

    def _face_filling(self, bgr: np.ndarray, grey: np.ndarray, side: int = 96) -> bool:
        """Whether a face fills the picture: YuNet on the picture at ``side`` pixels,
        with a black border of half that around it (about 2 ms)."""
        framed, least = _bordered(bgr, side)
        return any(row[2] >= least for row, _ in self._run(framed, 1.0, self.score_threshold, "look"))


class HaarDetector(Detector):
    """The prototype's Haar cascade, kept for comparison: one pass over the image at
    ``scale_for``; every face it finds is kept (no early exit)."""

    name = "haar"

    def __init__(self, max_side: int = 1024, max_upscale: float = 1.0, min_face: int = 16,
                 scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24):
        super().__init__(max_side, max_upscale, min_face)
        path = cv2.data.haarcascades + CASCADE_FILE
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise DetectorError(f"cannot load the Haar cascade {path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, bgr: np.ndarray | None, grey: np.ndarray) -> list[Face]:
        height, width = grey.shape
        scale = self.scale_for(width, height)
        small = grey if scale == 1.0 else _resized(grey, scale)
        found = self.cascade.detectMultiScale(small, scaleFactor=self.scale_factor,
                                              minNeighbors=self.min_neighbors,
                                              minSize=(self.min_size, self.min_size))
        faces = []
        for x, y, w, h in (found if len(found) else []):
            raw = (x / scale, y / scale, w / scale, h / scale)
            faces.append(Face(_clipped(*raw, width, height), raw))
        return self._kept(faces)

    def _face_filling(self, bgr: np.ndarray, grey: np.ndarray, side: int = 96) -> bool:
        """Whether a face fills the picture: the cascade on the picture at ``side``
        pixels, with a black border of half that around it, for faces at least
        FACE_CROP_MIN_FILL of its shorter side (a few large windows: about 3 ms)."""
        framed, least = _bordered(grey, side)
        least = int(least)
        return len(self.cascade.detectMultiScale(framed, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                                 minSize=(least, least))) > 0


def load_detector_file(directory: Path | str) -> tuple[dict, np.ndarray]:
    """``detector.json`` of ``directory`` and the bytes of the file it names, refusing a
    missing file or one whose sha256 differs."""
    directory = Path(directory)
    try:
        spec = json.loads((directory / "detector.json").read_text())
    except (OSError, ValueError) as exc:
        raise DetectorError(f"cannot read {directory / 'detector.json'}: {exc}") from exc
    path = directory / spec["file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DetectorError(f"the face detector {path} is missing ({exc.strerror}); `make setup` fetches it "
                            f"(expected sha256 {spec['sha256']})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec["sha256"]:
        raise DetectorError(f"the face detector {path} has sha256 {digest}, not {spec['sha256']} "
                            f"as {directory / 'detector.json'} says: refused")
    return spec, np.frombuffer(data, dtype=np.uint8)


def _bordered(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """The face-crop rule's second look: ``image`` at ``side`` pixels with a black border
    of half that around it, and the smallest face (FACE_CROP_MIN_FILL of the picture's
    shorter side, in those pixels) that fills it."""
    small = _resized(image, side / max(image.shape[:2]))
    border = side // 2
    framed = cv2.copyMakeBorder(small, border, border, border, border, cv2.BORDER_CONSTANT, value=0)
    return framed, FACE_CROP_MIN_FILL * min(small.shape[:2])


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` scaled by ``scale`` (INTER_AREA), each side at least one pixel."""
    height, width = image.shape[:2]
    return cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


def crop_face(grey: np.ndarray, face: Face | Box, size: int = 48, framing: Framing = Framing()) -> np.ndarray:
    """The face as a size x size grey uint8 crop, framed as ``framing`` says (for a
    Box, or by default: exactly the box).  Parts of the square outside the picture
    repeat its border pixels."""
    if isinstance(face, Box):
        face = Face(face, (face.x, face.y, face.width, face.height))
    if framing.scale is None and face.box.width and face.box.height:
        box = face.box
        return cv2.resize(grey[box.y:box.y + box.height, box.x:box.x + box.width], (size, size),
                          interpolation=cv2.INTER_AREA)
    x, y, w, h = face.raw
    side = (framing.scale or 1.0) * max(w, h)
    cx, cy = x + w / 2, y + h / 2 + framing.shift * h
    angle = 0.0
    if framing.level_eyes and face.landmarks is not None:
        (rx, ry), (lx, ly) = face.landmarks[0], face.landmarks[1]
        angle = math.degrees(math.atan2(ly - ry, lx - rx))
    # Downscale the region around the face first (INTER_AREA, as the model's training
    # crops were made), then turn and cut the square out of it.
    reach = side * (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))) / 2 + 2
    x0, y0 = int(math.floor(cx - reach)), int(math.floor(cy - reach))
    x1, y1 = int(math.ceil(cx + reach)), int(math.ceil(cy + reach))
    height, width = grey.shape
    region = grey[max(0, y0):min(height, y1), max(0, x0):min(width, x1)]
    region = cv2.copyMakeBorder(region, max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width),
                                cv2.BORDER_REPLICATE)
    factor = min(1.0, 2 * size / side)
    if factor < 1.0:
        region = _resized(region, factor)
    ccx, ccy = (cx - x0) * factor, (cy - y0) * factor
    matrix = cv2.getRotationMatrix2D((ccx, ccy), angle, size / (side * factor))
    matrix[0, 2] += size / 2 - ccx
    matrix[1, 2] += size / 2 - ccy
    return cv2.warpAffine(region, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def make_detector(kind: str, directory: Path | str, max_side: int, max_upscale: float, min_face: int,
                  score_threshold: float, scale_factor: float, min_neighbors: int) -> Detector:
    """The detector a setting names; an unknown name is refused with the allowed ones.
    ``max_side`` or ``max_upscale`` 0: that detector's default (DEFAULT_PASSES)."""
    if kind not in DEFAULT_PASSES:
        raise DetectorError(f"DETECTOR must be one of {', '.join(DETECTORS)}, not {kind!r}")
    max_side = max_side or DEFAULT_PASSES[kind][0]
    max_upscale = max_upscale or DEFAULT_PASSES[kind][1]
    if kind == "yunet":
        return YuNetDetector(directory, max_side=max_side, max_upscale=max_upscale, min_face=min_face,
                             score_threshold=score_threshold)
    return HaarDetector(max_side=max_side, max_upscale=max_upscale, min_face=min_face,
                        scale_factor=scale_factor, min_neighbors=min_neighbors)
