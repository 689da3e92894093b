"""One cold start, in this fresh process: the imports one by one (in the order the
handler needs them), then the handler module's own import, which reads the settings,
loads the model (the ONNX graph, and one forward pass that prepares it) and the face
detector
and sets up Powertools (Lambda's init phase).
Prints one JSON line of milliseconds.  Run by bench.run, several times."""
from __future__ import annotations

import time

START = time.perf_counter()

import importlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


def main() -> None:
    imports = {}
    for label, module in (("numpy", "numpy"), ("PIL", "PIL.Image"), ("cv2", "cv2"),
                          ("onnxruntime", "onnxruntime"), ("powertools", "aws_lambda_powertools")):
        t0 = time.perf_counter()
        importlib.import_module(module)
        imports[label] = _ms(t0)
    t0 = time.perf_counter()
    importlib.import_module("handlers.api")  # our modules, settings, model, detector, Logger, Metrics
    handler_module = _ms(t0)
    import sys
    assert "torch" not in sys.modules
    total = _ms(START)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The loading steps again, separately (their modules are imported by now).
    from emotion.config import Settings
    from emotion.pipeline import detector_for
    from emotion.model import load_model
    settings = Settings.from_env()
    t0 = time.perf_counter()
    load_model(settings.model_dir)
    model = _ms(t0)
    t0 = time.perf_counter()
    detector_for(settings)
    detector = _ms(t0)
    t0 = time.perf_counter()
    import boto3  # noqa: F401  (not imported at init: only by the first Rekognition call)
    boto = _ms(t0)
    print(json.dumps({"imports_ms": imports, "handler_module_ms": handler_module, "init_ms": total,
                      "load_model_ms": model, "load_detector_ms": detector, "boto3_import_deferred_ms": boto,
                      "rss_after_init_mb": round(rss_mb, 1)}))


if __name__ == "__main__":
    main()
