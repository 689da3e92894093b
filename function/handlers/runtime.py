"""What every handler shares, created once per container at import (the init phase):
settings, the loaded pipeline (model + cascade), the logger and the metrics."""
from __future__ import annotations

import os

# Before torch is imported (its OpenMP reads this once, at load): idle OpenMP threads
# sleep instead of spinning, so they leave the CPU to OpenCV's detection between
# forward passes and do not burn a Lambda's fractional vCPU share (BENCHMARKS.md:
# 10-25 % faster in one run, within noise in another).  The environment's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "emotion")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "EmotionService")

from aws_lambda_powertools import Logger, Metrics  # noqa: E402
from aws_lambda_powertools.metrics import MetricUnit  # noqa: E402

from emotion.config import Settings  # noqa: E402
from emotion.pipeline import Pipeline  # noqa: E402

logger = Logger()
metrics = Metrics()
settings = Settings.from_env()
pipeline = Pipeline(settings)
logger.info("model loaded", extra={"model_sha256": pipeline.model.sha256,
                                   "fallback_mode": settings.fallback_mode})


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def record(result: dict) -> None:
    """Metrics of one analysed image."""
    count("FacesFound", len(result["faces"]))
    count("FallbackUsed", int(result["source"] == "rekognition"))
    if "fallback_error" in result:
        count("FallbackErrors")
