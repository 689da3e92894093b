"""Settings of the service, read once from the environment (every knob is in template.yaml)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FALLBACK_MODES = ("no-face", "low-confidence", "off")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


@dataclass(frozen=True)
class Settings:
    model_dir: Path = Path("/opt/model")
    fallback_mode: str = "no-face"
    confidence_threshold: float = 0.5
    rekognition_region: str = "ap-northeast-2"
    rekognition_connect_timeout: float = 2.0
    rekognition_read_timeout: float = 5.0
    rekognition_max_attempts: int = 2
    max_image_bytes: int = 6 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    detect_max_side: int = 640
    detect_scale_factor: float = 1.1
    detect_min_neighbors: int = 5
    detect_min_size: int = 24
    detect_fast_side: int = 320
    detect_fast_scale_factor: float = 1.2
    face_crop_max_side: int = 256

    @classmethod
    def from_env(cls) -> "Settings":
        mode = _env("FALLBACK_MODE", cls.fallback_mode).lower()
        if mode not in FALLBACK_MODES:
            raise ValueError(f"FALLBACK_MODE must be one of {', '.join(FALLBACK_MODES)}, not {mode!r}")
        return cls(
            model_dir=Path(_env("MODEL_DIR", str(default_model_dir()))),
            fallback_mode=mode,
            confidence_threshold=float(_env("CONFIDENCE_THRESHOLD", str(cls.confidence_threshold))),
            rekognition_region=_env("REKOGNITION_REGION", cls.rekognition_region),
            rekognition_connect_timeout=float(_env("REKOGNITION_CONNECT_TIMEOUT", str(cls.rekognition_connect_timeout))),
            rekognition_read_timeout=float(_env("REKOGNITION_READ_TIMEOUT", str(cls.rekognition_read_timeout))),
            rekognition_max_attempts=int(_env("REKOGNITION_MAX_ATTEMPTS", str(cls.rekognition_max_attempts))),
            max_image_bytes=int(_env("MAX_IMAGE_BYTES", str(cls.max_image_bytes))),
            max_image_pixels=int(_env("MAX_IMAGE_PIXELS", str(cls.max_image_pixels))),
            detect_max_side=int(_env("DETECT_MAX_SIDE", str(cls.detect_max_side))),
            detect_scale_factor=float(_env("DETECT_SCALE_FACTOR", str(cls.detect_scale_factor))),
            detect_min_neighbors=int(_env("DETECT_MIN_NEIGHBORS", str(cls.detect_min_neighbors))),
            detect_min_size=int(_env("DETECT_MIN_SIZE", str(cls.detect_min_size))),
            detect_fast_side=int(_env("DETECT_FAST_SIDE", str(cls.detect_fast_side))),
            detect_fast_scale_factor=float(_env("DETECT_FAST_SCALE_FACTOR", str(cls.detect_fast_scale_factor))),
            face_crop_max_side=int(_env("FACE_CROP_MAX_SIDE", str(cls.face_crop_max_side))),
        )


def default_model_dir() -> Path:
    """/opt/model in the image; the repository's layers/model/ when run from a checkout."""
    baked = Path("/opt/model")
    if (baked / "manifest.json").exists():
        return baked
    return Path(__file__).resolve().parents[2] / "layers" / "model"
