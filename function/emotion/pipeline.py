"""The detection pipeline: image bytes -> faces with emotions.

Local first (YuNet or the Haar cascade through OpenCV, then the ResNet9 through
onnxruntime, one batched forward pass for every face);
Amazon Rekognition only when the configuration says so, and at most
FALLBACK_MAX_PER_MINUTE times a minute per container (FallbackBudget).  Knows nothing
of API Gateway or S3."""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Callable

import cv2
import numpy as np

from emotion import rekognition
from emotion.config import Settings
from emotion.faces import Detector, crop_face, make_detector
from emotion.images import DecodedImage, decode, jpeg_or_png_within
from emotion.model import LoadedModel, load_model, use_available_cpus

log = logging.getLogger(__name__)

BUDGET_EXCEEDED = "fallback_budget_exceeded"
WINDOW_S = 60.0


class FallbackBudget:
    """At most ``per_minute`` Rekognition calls in any sliding 60-second window, for
    every thread of this container (Lambda runs one request at a time per container,
    but local servers and tests may not).

    A call is counted when it is attempted, before it is made, whatever becomes of it:
    a call that fails (throttled, timed out, denied) was still sent, may still be
    billed, and a Rekognition in trouble is not helped by more calls.  ``clock`` is
    seconds that never go back (time.monotonic; tests pass their own)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        if per_minute < 0:
            raise ValueError(f"per_minute must be >= 0, not {per_minute}")
        self.per_minute = per_minute
        self.clock = clock
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()

    def _forget_old(self, now: float) -> None:
        while self._calls and now - self._calls[0] >= WINDOW_S:
            self._calls.popleft()

    def try_acquire(self) -> float | None:
        """None when a call may be made now (and it is counted); else the seconds until
        one may (math.inf when per_minute is 0)."""
        with self._lock:
            if self.per_minute == 0:
                return math.inf
            now = self.clock()
            self._forget_old(now)
            if len(self._calls) < self.per_minute:
                self._calls.append(now)
                return None
            return max(0.0, self._calls[0] + WINDOW_S - now)

    def used(self) -> int:
        """Calls counted in the last 60 seconds."""
        with self._lock:
            self._forget_old(self.clock())
            return len(self._calls)

    def exceeded(self, wait: float) -> dict:
        """The ``fallback_error`` of an answer that did not ask Rekognition."""
        if self.per_minute == 0:
            message = ("Amazon Rekognition was not asked: this service allows it 0 calls per minute, "
                       "so the answer is the local one.")
        else:
            message = (f"Amazon Rekognition was not asked: this instance's limit of {self.per_minute} calls "
                       f"per minute is reached; it resets in {max(1, math.ceil(wait))} s.  "
                       "The answer is the local one.")
        return {"code": BUDGET_EXCEEDED, "message": message}


def ms_since(start: float) -> float:
    """Milliseconds since ``start`` (time.perf_counter), for the logs."""
    return round((time.perf_counter() - start) * 1000.0, 2)


def detector_for(settings: Settings) -> Detector:
    """The face detector the settings describe."""
    s = settings
    return make_detector(s.detector, s.detector_dir, max_side=s.detect_max_side, max_upscale=s.detect_max_upscale,
                         min_face=s.detect_min_face, score_threshold=s.detect_score_threshold,
                         scale_factor=s.detect_scale_factor, min_neighbors=s.detect_min_neighbors)


class Pipeline:
    """Loaded once per container (model, detector), then called for every image."""

    def __init__(self, settings: Settings, model: LoadedModel | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        use_available_cpus()  # OpenCV's threads (detection); the classifier sets its own
        self.model = model or load_model(settings.model_dir, settings.model_precision or None,
                                         flip=settings.model_flip_average)
        self.detector = detector_for(settings)
        self.fallback_budget = FallbackBudget(settings.fallback_max_per_minute, clock)

    @property
    def model_info(self) -> dict:
        return {"name": self.model.manifest["architecture"], "sha256": self.model.sha256,
                "precision": self.model.precision, "flip_average": self.model.flip}

    def analyse(self, data: bytes, timings: dict | None = None) -> dict:
        """The answer for one image.  Raises emotion.errors.InputError for bad input;
        a failing Rekognition never raises (the answer gets ``fallback_error``).
        ``timings``, when given, gets the milliseconds of each stage (``analyse_image``)."""
        return self.analyse_image(self.decode(data, timings), timings)

    def analyse_image(self, image: DecodedImage, timings: dict | None = None) -> dict:
        """The answer for a decoded image (``decode``); the same as ``analyse``.

        ``timings``, when given, gets ``detect_ms``, ``classify_ms`` and ``fallback_ms``
        (0 when Rekognition was not called): for the logs, never part of the answer,
        whose schema is fixed (function/web/openapi.yaml)."""
        timings = {} if timings is None else timings
        faces = self.local_faces(image, timings)
        source = "local" if faces else "none"
        fallback_error = None
        timings["fallback_ms"] = 0.0
        if self._wants_fallback(faces):
            wait = self.fallback_budget.try_acquire()
            if wait is not None:
                fallback_error = self.fallback_budget.exceeded(wait)  # the handler's log line says so
            else:
                started = time.perf_counter()
                try:
                    remote = self.rekognition_faces(image)
                except rekognition.FallbackError as exc:
                    log.warning("rekognition failed: %s", exc.code)
                    fallback_error = {"code": exc.code, "message": exc.message}
                else:
                    if remote:
                        faces, source = remote, "rekognition"
                finally:
                    timings["fallback_ms"] = ms_since(started)
        best = max(faces, key=lambda f: f["confidence"], default=None)
        result = {
            "emotion": best["emotion"] if best else None,
            "faces": faces,
            "source": source,
            "image": {"width": image.width, "height": image.height},
            "model": self.model_info,
        }
        if fallback_error:
            result["fallback_error"] = fallback_error
        return result

    def decode(self, data: bytes, timings: dict | None = None) -> DecodedImage:
        """The image, a large JPEG at reduced size: at least the detector's resolution is
        kept (its max_side), so it sees what it would in the full picture.  ``timings``,
        when given, gets ``decode_ms`` (also when the image is refused)."""
        s = self.settings
        started = time.perf_counter()
        try:
            return decode(data, s.max_image_bytes, s.max_image_pixels, min_side=self.detector.max_side)
        finally:
            if timings is not None:
                timings["decode_ms"] = ms_since(started)

    def local_faces(self, image: DecodedImage, timings: dict | None = None) -> list[dict]:
        """The faces the detector finds, classified in one batch; or the whole picture as
        the one face when it is a face crop (Detector.face_crop).  ``timings``, when
        given, gets ``detect_ms`` (the face crop's second look included) and
        ``classify_ms`` (crops, the model, the answer's faces)."""
        timings = {} if timings is None else timings
        started = time.perf_counter()
        bgr = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR)
        grey = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)
        found = self.detector.detect(bgr, grey)
        whole = self.detector.face_crop(bgr, grey, found, self.settings.face_crop_max_side)
        timings["detect_ms"] = ms_since(started)
        started = time.perf_counter()
        timings["classify_ms"] = 0.0
        size = self.model.manifest["input"]["size"]
        if whole:
            crops = [crop_face(grey, whole, size)]
        else:
            crops = [crop_face(grey, face, size, self.detector.framing) for face in found]
        if not crops:
            return []
        probs = self.model.predict(crops)
        classes = self.model.classes
        faces = []
        for i, p in enumerate(probs):
            top = int(np.argmax(p))
            if whole:
                face = {"box": whole.scaled(1 / image.scale, image.width, image.height).to_dict(),
                        "whole_image": True}
            else:
                found_face = found[i].scaled(1 / image.scale, image.width, image.height)
                face = {"box": found_face.box.to_dict()}
                if found_face.landmarks is not None:
                    face["landmarks"] = found_face.landmarks_dict()
                    face["detection_score"] = found_face.score
            face.update({"emotion": classes[top], "confidence": round(float(p[top]), 4),
                         "scores": {c: round(float(s), 4) for c, s in zip(classes, p)}, "source": "local"})
            faces.append(face)
        timings["classify_ms"] = ms_since(started)
        return faces

    def _wants_fallback(self, faces: list[dict]) -> bool:
        mode = self.settings.fallback_mode
        if mode == "off":
            return False
        if not faces:
            return True
        return mode == "low-confidence" and max(f["confidence"] for f in faces) < self.settings.confidence_threshold

    def rekognition_faces(self, image: DecodedImage) -> list[dict]:
        s = self.settings
        client = rekognition.client(s.rekognition_region, s.rekognition_connect_timeout,
                                    s.rekognition_read_timeout, s.rekognition_max_attempts)
        return rekognition.detect_faces(jpeg_or_png_within(image, rekognition.MAX_BYTES),
                                        image.width, image.height, client)
