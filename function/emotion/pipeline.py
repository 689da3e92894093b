"""The detection pipeline: image bytes -> faces with emotions.

Local first (YuNet or the Haar cascade through OpenCV, then the ResNet9 through
onnxruntime, one batched forward pass for every face);
Amazon Rekognition only when the configuration says so.  Knows nothing of API
Gateway or S3."""
from __future__ import annotations

import logging

import cv2
import numpy as np

from emotion import rekognition
from emotion.config import Settings
from emotion.faces import Detector, crop_face, make_detector
from emotion.images import DecodedImage, decode, jpeg_or_png_within
from emotion.model import LoadedModel, load_model, use_available_cpus

log = logging.getLogger(__name__)


def detector_for(settings: Settings) -> Detector:
    """The face detector the settings describe."""
    s = settings
    return make_detector(s.detector, s.detector_dir, max_side=s.detect_max_side, max_upscale=s.detect_max_upscale,
                         min_face=s.detect_min_face, score_threshold=s.detect_score_threshold,
                         scale_factor=s.detect_scale_factor, min_neighbors=s.detect_min_neighbors)


class Pipeline:
    """Loaded once per container (model, detector), then called for every image."""

    def __init__(self, settings: Settings, model: LoadedModel | None = None):
        self.settings = settings
        use_available_cpus()  # OpenCV's threads (detection); the classifier sets its own
        self.model = model or load_model(settings.model_dir, settings.model_precision or None)
        self.detector = detector_for(settings)

    @property
    def model_info(self) -> dict:
        return {"name": self.model.manifest["architecture"], "sha256": self.model.sha256,
                "precision": self.model.precision}

    def analyse(self, data: bytes) -> dict:
        """The answer for one image.  Raises emotion.errors.InputError for bad input;
        a failing Rekognition never raises (the answer gets ``fallback_error``)."""
        return self.analyse_image(self.decode(data))

    def analyse_image(self, image: DecodedImage) -> dict:
        """The answer for a decoded image (``decode``); the same as ``analyse``."""
        faces = self.local_faces(image)
        source = "local" if faces else "none"
        fallback_error = None
        if self._wants_fallback(faces):
            try:
                remote = self.rekognition_faces(image)
            except rekognition.FallbackError as exc:
                log.warning("rekognition failed: %s", exc.code)
                fallback_error = {"code": exc.code, "message": exc.message}
            else:
                if remote:
                    faces, source = remote, "rekognition"
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

    def decode(self, data: bytes) -> DecodedImage:
        """The image, a large JPEG at reduced size: at least the detector's resolution is
        kept (its max_side), so it sees what it would in the full picture."""
        s = self.settings
        return decode(data, s.max_image_bytes, s.max_image_pixels, min_side=self.detector.max_side)

    def local_faces(self, image: DecodedImage) -> list[dict]:
        """The faces the detector finds, classified in one batch; or the whole picture as
        the one face when it is a face crop (Detector.face_crop)."""
        bgr = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR)
        grey = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)
        found = self.detector.detect(bgr, grey)
        whole = self.detector.face_crop(bgr, grey, found, self.settings.face_crop_max_side)
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
