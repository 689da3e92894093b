"""What every handler shares, created once per container at import (the init phase):
settings, the loaded pipeline (model + face detector), the logger and the metrics."""
from __future__ import annotations

import os

os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "emotion")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "EmotionService")

from aws_lambda_powertools import Logger, Metrics  # noqa: E402  (after the defaults above)
from aws_lambda_powertools.metrics import MetricUnit  # noqa: E402

from emotion.config import Settings  # noqa: E402
from emotion.pipeline import Pipeline  # noqa: E402

logger = Logger()
metrics = Metrics()
settings = Settings.from_env()
pipeline = Pipeline(settings)
logger.info("model loaded", extra={"model_sha256": pipeline.model.sha256,
                                   "detector": pipeline.detector.name,
                                   "fallback_mode": settings.fallback_mode})


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def record(result: dict) -> None:
    """Metrics of one analysed image."""
    count("FacesFound", len(result["faces"]))
    count("FallbackUsed", int(result["source"] == "rekognition"))
    count("FaceCrops", int(any(face.get("whole_image") for face in result["faces"])))
    if "fallback_error" in result:
        count("FallbackErrors")
