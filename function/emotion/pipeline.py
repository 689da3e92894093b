"""The detection pipeline: image bytes -> faces with emotions.

Local first (Haar cascade + ResNet9 through OpenCV's DNN module, one batched forward
pass for every face);
Amazon Rekognition only when the configuration says so.  Knows nothing of API
Gateway or S3."""
from __future__ import annotations

import logging

import cv2
import numpy as np

from emotion import rekognition
from emotion.config import Settings
from emotion.faces import FaceDetector, crop_face
from emotion.images import DecodedImage, decode, jpeg_or_png_within
from emotion.model import LoadedModel, load_model, use_available_cpus

log = logging.getLogger(__name__)


class Pipeline:
    """Loaded once per container (model, cascade), then called for every image."""

    def __init__(self, settings: Settings, model: LoadedModel | None = None):
        self.settings = settings
        use_available_cpus()  # OpenCV's threads: detection and the network
        self.model = model or load_model(settings.model_dir)
        self.detector = FaceDetector(max_side=settings.detect_max_side,
                                     scale_factor=settings.detect_scale_factor,
                                     min_neighbors=settings.detect_min_neighbors,
                                     min_size=settings.detect_min_size,
                                     fast_side=settings.detect_fast_side,
                                     fast_scale_factor=settings.detect_fast_scale_factor)

    @property
    def model_info(self) -> dict:
        return {"name": self.model.manifest["architecture"], "sha256": self.model.sha256}

    def analyse(self, data: bytes) -> dict:
        """The answer for one image.  Raises emotion.errors.InputError for bad input;
        a failing Rekognition never raises (the answer gets ``fallback_error``)."""
        image = self.decode(data)
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
        """The image, a large JPEG at reduced size: twice the detection resolution is
        kept, so that every face the detector can find still has at least
        2 * detect_min_size pixels for the model's 48-pixel crop."""
        s = self.settings
        return decode(data, s.max_image_bytes, s.max_image_pixels, min_side=2 * s.detect_max_side)

    def local_faces(self, image: DecodedImage) -> list[dict]:
        """The faces the cascade finds, classified in one batch; or the whole picture as
        the one face when it is a face crop (FaceDetector.face_crop)."""
        grey = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)
        boxes = self.detector.detect(grey)
        whole = self.detector.face_crop(grey, boxes, self.settings.face_crop_max_side)
        boxes = [whole] if whole else boxes
        if not boxes:
            return []
        size = self.model.manifest["input"]["size"]
        probs = self.model.predict([crop_face(grey, box, size) for box in boxes])
        classes = self.model.classes
        faces = []
        for box, p in zip(boxes, probs):
            top = int(np.argmax(p))
            faces.append({
                "box": box.scaled(1 / image.scale, image.width, image.height).to_dict(),
                "emotion": classes[top],
                "confidence": round(float(p[top]), 4),
                "scores": {c: round(float(s), 4) for c, s in zip(classes, p)},
                "source": "local",
            })
            if whole:
                faces[-1]["whole_image"] = True
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
