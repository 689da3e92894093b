"""What every handler shares, created once per container at import (the init phase):
settings, the loaded pipeline (model + face detector), the logger and the metrics."""
from __future__ import annotations

import os

os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "emotion")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "EmotionService")

from aws_lambda_powertools import Logger, Metrics  # noqa: E402  (after the defaults above)
from aws_lambda_powertools.metrics import MetricUnit  # noqa: E402

from emotion.config import Settings  # noqa: E402
from emotion.pipeline import BUDGET_EXCEEDED, Pipeline  # noqa: E402

# The stages timed for the logs (Pipeline.decode and analyse_image fill them).
TIMINGS = ("decode_ms", "detect_ms", "classify_ms", "fallback_ms")

logger = Logger()
metrics = Metrics()
settings = Settings.from_env()
pipeline = Pipeline(settings)
logger.info("model loaded", extra={"model_sha256": pipeline.model.sha256,
                                   "detector": pipeline.detector.name,
                                   "fallback_mode": settings.fallback_mode,
                                   "fallback_max_per_minute": settings.fallback_max_per_minute})


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def record(result: dict) -> None:
    """Metrics of one analysed image.  FallbackErrors: Rekognition was called and failed;
    FallbackBudgetExceeded: it was not called, FALLBACK_MAX_PER_MINUTE being reached."""
    count("FacesFound", len(result["faces"]))
    count("FallbackUsed", int(result["source"] == "rekognition"))
    count("FaceCrops", int(any(face.get("whole_image") for face in result["faces"])))
    if "fallback_error" in result:
        count("FallbackBudgetExceeded" if result["fallback_error"]["code"] == BUDGET_EXCEEDED else "FallbackErrors")


def analysed_fields(result: dict, timings: dict) -> dict:
    """What the one log line of an analysed image says (never the image, nor what was
    read in its faces): its size, how many faces, where the answer came from, the
    fallback's error code (absent when none: Powertools leaves out None), and the
    milliseconds of each stage."""
    fields = {"width": result["image"]["width"], "height": result["image"]["height"],
              "faces": len(result["faces"]), "source": result["source"],
              "fallback_error": (result.get("fallback_error") or {}).get("code")}
    fields.update({name: timings.get(name, 0.0) for name in TIMINGS})
    return fields
