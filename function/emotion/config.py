"""Settings of the service, read once from the environment (every knob is in template.yaml)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from emotion.faces import DETECTORS
from emotion.model import PRECISIONS

FALLBACK_MODES = ("no-face", "low-confidence", "off")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


@dataclass(frozen=True)
class Settings:
    model_dir: Path = Path("/opt/model")
    model_precision: str = ""        # int8 | fp32; empty: the manifest's "serves"
    model_flip_average: bool | None = None  # None: the manifest's "flip_average"
    fallback_mode: str = "no-face"
    confidence_threshold: float = 0.55
    rekognition_region: str = "ap-northeast-2"
    rekognition_connect_timeout: float = 2.0
    rekognition_read_timeout: float = 5.0
    rekognition_max_attempts: int = 2
    fallback_max_per_minute: int = 60  # DetectFaces calls per container per minute; 0: none
    max_image_bytes: int = 6 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    detector: str = "yunet"
    detector_dir: Path = Path("/opt/detector")
    detect_max_side: int = 0         # 0: the detector's own (faces.DEFAULT_PASSES)
    detect_max_upscale: float = 0.0  # likewise
    detect_min_face: int = 16
    detect_score_threshold: float = 0.65
    detect_scale_factor: float = 1.1
    detect_min_neighbors: int = 5
    face_crop_max_side: int = 256

    @classmethod
    def from_env(cls) -> "Settings":
        mode = _env("FALLBACK_MODE", cls.fallback_mode).lower()
        if mode not in FALLBACK_MODES:
            raise ValueError(f"FALLBACK_MODE must be one of {', '.join(FALLBACK_MODES)}, not {mode!r}")
        precision = os.environ.get("MODEL_PRECISION", "").strip().lower()
        if precision and precision not in PRECISIONS:
            raise ValueError(f"MODEL_PRECISION must be one of {', '.join(PRECISIONS)} (or empty), not {precision!r}")
        flip = os.environ.get("MODEL_FLIP_AVERAGE", "").strip().lower()
        if flip not in ("", "true", "false"):
            raise ValueError(f"MODEL_FLIP_AVERAGE must be true or false (or empty), not {flip!r}")
        detector = _env("DETECTOR", cls.detector).lower()
        if detector not in DETECTORS:
            raise ValueError(f"DETECTOR must be one of {', '.join(DETECTORS)}, not {detector!r}")
        # The most DetectFaces calls this container makes in any minute (the paid fallback's
        # guard; pipeline.FallbackBudget): 0 turns Rekognition off whatever FALLBACK_MODE says.
        per_minute = _whole("FALLBACK_MAX_PER_MINUTE",
                            _env("FALLBACK_MAX_PER_MINUTE", str(cls.fallback_max_per_minute)))
        return cls(
            model_dir=Path(_env("MODEL_DIR", str(default_model_dir()))),
            model_precision=precision,
            model_flip_average=None if not flip else flip == "true",
            fallback_mode=mode,
            fallback_max_per_minute=per_minute,
            confidence_threshold=float(_env("CONFIDENCE_THRESHOLD", str(cls.confidence_threshold))),
            rekognition_region=_env("REKOGNITION_REGION", cls.rekognition_region),
            rekognition_connect_timeout=float(_env("REKOGNITION_CONNECT_TIMEOUT", str(cls.rekognition_connect_timeout))),
            rekognition_read_timeout=float(_env("REKOGNITION_READ_TIMEOUT", str(cls.rekognition_read_timeout))),
            rekognition_max_attempts=int(_env("REKOGNITION_MAX_ATTEMPTS", str(cls.rekognition_max_attempts))),
            max_image_bytes=int(_env("MAX_IMAGE_BYTES", str(cls.max_image_bytes))),
            max_image_pixels=int(_env("MAX_IMAGE_PIXELS", str(cls.max_image_pixels))),
            detector=detector,
            detector_dir=Path(_env("DETECTOR_DIR", str(default_detector_dir()))),
            detect_max_side=int(_env("DETECT_MAX_SIDE", str(cls.detect_max_side))),
            detect_max_upscale=float(_env("DETECT_MAX_UPSCALE", str(cls.detect_max_upscale))),
            detect_min_face=int(_env("DETECT_MIN_FACE", str(cls.detect_min_face))),
            detect_score_threshold=float(_env("DETECT_SCORE_THRESHOLD", str(cls.detect_score_threshold))),
            detect_scale_factor=float(_env("DETECT_SCALE_FACTOR", str(cls.detect_scale_factor))),
            detect_min_neighbors=int(_env("DETECT_MIN_NEIGHBORS", str(cls.detect_min_neighbors))),
            face_crop_max_side=int(_env("FACE_CROP_MAX_SIDE", str(cls.face_crop_max_side))),
        )


def _whole(name: str, text: str) -> int:
    """``text`` as a whole number >= 0; anything else (negative, 1.5, "ten") is a ValueError."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, not {text!r}")
    return value


def _baked_or_checkout(name: str, marker: str) -> Path:
    """/opt/<name> in the image; the repository's layers/<name>/ when run from a checkout."""
    baked = Path("/opt") / name
    if (baked / marker).exists():
        return baked
    return Path(__file__).resolve().parents[2] / "layers" / name


def default_model_dir() -> Path:
    return _baked_or_checkout("model", "manifest.json")


def default_detector_dir() -> Path:
    return _baked_or_checkout("detector", "detector.json")
