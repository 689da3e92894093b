"""The int8 graph the service serves: the fp32 ONNX graph quantised, and held to a gate.

    python -m training.quantize [--model-dir layers/model] [--data ...] [--dry-run]

Run after the weights are exported (training.train, training.average) and calibrated
(training.calibrate), since the gate compares calibrated confidences.  Static
quantisation by onnxruntime (``RECIPE``): activations uint8 with one scale per tensor,
observed on 512 FER2013 Training crops (never PublicTest); weights int8 with one scale
per output channel, in 7 bits so that no x86 kernel's 16-bit accumulation of two
products can saturate (AVX2 without VNNI, the common Lambda case).

The gate, on all 3,589 PublicTest faces, against the fp32 graph run by the same engine:
accuracy at most 0.3 points lower, at least 98 % the same top-1 answer, and an expected
calibration error (after the manifest's temperature) at most 0.01 higher.  A graph that
fails is not written, and the command exits non-zero.  One that passes is written
beside the fp32 graph with its sha256 in the manifest's ``onnx_int8`` (the recipe and
the gate's figures with it), and ``serves`` becomes ``int8``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from training.common import DEFAULT_DATA, ROOT, TRAINING, load_publictest, load_split, set_manifest_keys
from training.calibrate import BINS, expected_calibration_error, logits_of
from emotion.model import WeightsError, load_model, normalise, sha256_bytes, softmax

INT8_FILE = "resnet9_fer2013.int8.onnx"
CALIBRATION_N, CALIBRATION_SEED, CALIBRATION_BATCH = 512, 0, 32
GATE = {"max_accuracy_drop": 0.003, "min_agreement": 0.98, "max_ece_rise": 0.01}
RECIPE = {
    "tool": "onnxruntime.quantization.quantize_static, after quant_pre_process (BatchNorm folded into "
            "the convolutions, the fp16->fp32 casts folded)",
    "format": "QDQ",
    "activations": "uint8, per tensor, asymmetric, MinMax over the calibration crops",
    "weights": "int8, per output channel, symmetric, reduce_range (7 bits)",
    "calibration": f"{CALIBRATION_N} FER2013 Training crops: rows "
                   f"sorted(numpy.random.default_rng({CALIBRATION_SEED}).choice(n_training, {CALIBRATION_N}, "
                   f"replace=False)), in batches of {CALIBRATION_BATCH}",
}


def calibration_crops(images: np.ndarray) -> np.ndarray:
    """The Training crops the activation ranges are observed on."""
    rows = np.sort(np.random.default_rng(CALIBRATION_SEED).choice(len(images), CALIBRATION_N, replace=False))
    return images[rows]


def quantise(fp32_graph: Path, crops: np.ndarray, spec: dict) -> bytes:
    """The int8 graph of ``fp32_graph`` (RECIPE), as bytes."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Crops(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"faces": normalise(crops[i:i + CALIBRATION_BATCH], spec)}
                                 for i in range(0, len(crops), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared, out = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_graph), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Crops(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return out.read_bytes()


def gate(fp32_logits: np.ndarray, int8_logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """The int8 graph's figures beside the fp32 graph's on the same faces, and whether
    they pass ``GATE``."""
    t = np.float32(temperature)
    fp32, int8 = softmax(fp32_logits / t), softmax(int8_logits / t)
    figures = {
        "split": "FER2013 PublicTest", "n": int(len(labels)), "temperature": float(temperature), "ece_bins": BINS,
        "fp32": {"accuracy": round(float((fp32.argmax(1) == labels).mean()), 4),
                 "ece": round(expected_calibration_error(fp32, labels), 4)},
        "int8": {"accuracy": round(float((int8.argmax(1) == labels).mean()), 4),
                 "ece": round(expected_calibration_error(int8, labels), 4)},
        "agreement": round(float((fp32.argmax(1) == int8.argmax(1)).mean()), 4),
        "limits": GATE,
    }
    failures = []
    if figures["int8"]["accuracy"] < figures["fp32"]["accuracy"] - GATE["max_accuracy_drop"]:
        failures.append(f"accuracy dropped by more than {100 * GATE['max_accuracy_drop']:g} points")
    if figures["agreement"] < GATE["min_agreement"]:
        failures.append(f"fewer than {100 * GATE['min_agreement']:g} % of the answers agree with fp32")
    if figures["int8"]["ece"] > figures["fp32"]["ece"] + GATE["max_ece_rise"]:
        failures.append(f"the calibration error rose by more than {GATE['max_ece_rise']:g}")
    figures["passed"] = not failures
    figures["failures"] = failures
    return figures


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz with images, labels and usage")
    p.add_argument("--model-dir", type=Path, default=ROOT / "layers" / "model", help="manifest.json + fp32 ONNX graph")
    p.add_argument("--dry-run", action="store_true", help="print the gate's figures; write nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import onnxruntime

    args = parse_args(argv)
    try:
        images, labels = load_publictest(args.data)
    except (OSError, ValueError) as exc:
        sys.exit(str(exc))
    try:
        fp32 = load_model(args.model_dir, precision="fp32")  # sha256 checked
    except WeightsError as exc:
        sys.exit(f"refused: {exc}")
    manifest, spec = fp32.manifest, fp32.manifest["input"]
    training_images, _ = load_split(args.data, TRAINING)

    graph = quantise(args.model_dir / manifest["onnx"]["file"], calibration_crops(training_images), spec)
    with tempfile.TemporaryDirectory() as tmp:  # the candidate, loaded exactly as the service would load it
        candidate = Path(tmp)
        (candidate / INT8_FILE).write_bytes(graph)
        entry = {"file": INT8_FILE, "sha256": sha256_bytes(graph), "source_sha256": manifest["onnx"]["sha256"]}
        (candidate / "manifest.json").write_text(json.dumps({**manifest, "onnx_int8": entry}))
        int8 = load_model(candidate, precision="int8")
        figures = gate(logits_of(fp32, images), logits_of(int8, images), labels, fp32.temperature)
    entry.update({"input": manifest["onnx"]["input"], "output": manifest["onnx"]["output"],
                  "recipe": {**RECIPE, "onnxruntime": onnxruntime.__version__}, "gate": figures})
    print(json.dumps(entry, indent=2))
    if not figures["passed"]:
        print(f"refused: the int8 graph fails the gate ({'; '.join(figures['failures'])}); nothing written",
              file=sys.stderr)
        return 1
    if not args.dry_run:
        (args.model_dir / INT8_FILE).write_bytes(graph)
        set_manifest_keys(args.model_dir, {"onnx_int8": entry, "serves": "int8"}, {"onnx": manifest["onnx"]})
        print(f"wrote {args.model_dir / INT8_FILE}; the manifest serves int8", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
