"""The shipped emotion classifier, run by onnxruntime: no torch at run time.

The ResNet9 is trained in torch (training/network.py holds the network's one
definition) and shipped in layers/model/ as its fp16 state_dict, which training and
evaluation read, the same weights as an fp32 ONNX graph, and that graph quantised to
int8 (training/quantize.py, held to an accuracy and calibration gate).  The manifest's
``serves`` says which graph serves; ``load_model(..., precision=)`` can choose.  This
module checks the graph's sha256 against the manifest, runs it with onnxruntime on
the CPUs the process may use, and turns 48x48 grey crops into class probabilities,
calibrated by the manifest's temperature.  When the manifest says ``flip_average``, each
crop's logits are the mean of the crop's and its mirror image's (one batch of 2N).  Nothing here knows about Lambda, API
Gateway or S3.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

# FER2013's own class ids: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
# Our logits are in the same order; these are the names the service returns.
CLASSES = ("ANGRY", "DISGUST", "FEAR", "HAPPY", "SAD", "SURPRISE", "NEUTRAL")
FER2013_IDS = (0, 1, 2, 3, 4, 5, 6)
INPUT_SIZE = 48


class WeightsError(RuntimeError):
    """The shipped model is missing, corrupt or does not match its manifest."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalise(faces: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 crops (N, 48, 48) -> the network's float32 input (N, 1, 48, 48):
    ``(pixel / scale - mean) / std`` with the manifest's ``input`` values, in float32.
    Training and evaluation normalise through this function too."""
    x = np.asarray(faces, dtype=np.float32) / np.float32(spec["scale"])
    x = (x - np.float32(spec["mean"])) / np.float32(spec["std"])
    return x[:, None, :, :]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class Described:
    """What a loaded model's manifest says about it (the ONNX graph here, the torch
    network in training share it)."""

    manifest: dict

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def sha256(self) -> str:
        """The trained weights' sha256: the model's identity in every answer."""
        return self.manifest["sha256"]

    @property
    def flip_average(self) -> bool:
        """Whether the served logits of a crop are the mean of its and its mirror image's
        (test-time augmentation the manifest's metrics, calibration and int8 gate measured)."""
        return bool(self.manifest.get("flip_average", False))

    @property
    def temperature(self) -> float:
        """The logits are divided by it before the softmax, so that a confidence of 0.7
        is right about 70 % of the time (the manifest's ``calibration``, fitted by
        ``python -m training.calibrate``); 1 when the manifest has none."""
        return float(self.manifest.get("calibration", {}).get("temperature", 1.0))


PRECISIONS = ("int8", "fp32")
# the manifest's entry of each graph: "onnx" is the fp32 graph the weights were exported
# to, "onnx_int8" its quantised copy (training/quantize.py), present once it passed the gate
GRAPH_ENTRIES = {"fp32": "onnx", "int8": "onnx_int8"}


@dataclass
class LoadedModel(Described):
    """The network, ready to run, plus what its manifest says about it."""

    session: ort.InferenceSession
    manifest: dict
    precision: str = "fp32"
    flip: bool = False

    def logits(self, faces: list[np.ndarray]) -> np.ndarray:
        """Logits, shape (len(faces), 7), of 48x48 grey uint8 crops, in one forward pass
        (not divided by the temperature); with ``flip``, the mean of each crop's and its
        mirror image's, both in that one pass.  A session may run from several threads at once."""
        x = normalise(np.stack(faces), self.manifest["input"])
        if not self.flip:
            return self.session.run(None, {self._input_name: x})[0].astype(np.float32)
        both = self.session.run(None, {self._input_name: np.concatenate([x, x[..., ::-1]])})[0]
        return ((both[:len(x)] + both[len(x):]) / 2).astype(np.float32)

    @cached_property
    def _input_name(self) -> str:
        return self.session.get_inputs()[0].name

    def predict(self, faces: list[np.ndarray]) -> np.ndarray:
        """Calibrated class probabilities, shape (len(faces), 7), for 48x48 grey uint8
        crops, in one batched forward pass: ``softmax(logits / temperature)``."""
        if not faces:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return softmax(self.logits(faces) / np.float32(self.temperature))


def available_cpus() -> int:
    """How many CPUs this process may run on (not how many the host has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_available_cpus() -> int:
    """Make OpenCV (decoding help, the face detector) use one thread per available CPU,
    and return that number.  The classifier's threads are its session's (load_model)."""
    n = available_cpus()
    cv2.setNumThreads(n)
    return n


def session_options(threads: int) -> ort.SessionOptions:
    """How the classifier's session runs (measured in bench/warm.py; BENCHMARKS.md):
    ``threads`` for the operators, one graph node at a time (the ResNet9 is a chain),
    every graph optimisation, and no spin-waiting: between two forward passes the
    threads sleep and leave the CPUs to OpenCV's detector."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: no optimiser notices in the function's log
    return options


def read_manifest(directory: Path | str) -> dict:
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {directory / 'manifest.json'}: {exc}") from exc
    if manifest.get("architecture") != "resnet9" or len(manifest.get("classes", ())) != 7:
        raise WeightsError("manifest does not describe a 7-class resnet9")
    return manifest


def served_precision(manifest: dict, precision: str | None = None) -> str:
    """The precision that serves: ``precision`` when given, else the manifest's
    ``serves``, else fp32 (a manifest written before quantisation)."""
    chosen = (precision or manifest.get("serves") or "fp32").lower()
    if chosen not in PRECISIONS:
        raise WeightsError(f"model precision must be one of {', '.join(PRECISIONS)}, not {chosen!r}")
    if GRAPH_ENTRIES[chosen] not in manifest:
        raise WeightsError(f"the manifest has no {chosen} graph ({GRAPH_ENTRIES[chosen]!r}); "
                           + ("make it with python -m training.quantize" if chosen == "int8" else "export the weights"))
    return chosen


def load_model(directory: Path | str, precision: str | None = None, threads: int | None = None,
               flip: bool | None = None) -> LoadedModel:
    """Load the ONNX graph of ``directory`` in ``precision`` (int8 or fp32; None: what
    the manifest serves), refusing a file whose sha256 differs from the manifest's, and
    run it once on a blank face, so that the session's first-run work (memory plans,
    prepacked weights) belongs to the cold start, not to the first request.
    ``threads``: the operators' threads (None: one per available CPU).  ``flip``: average
    each crop with its mirror image (None: as the manifest's ``flip_average`` says; its
    calibration was fitted for that)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    chosen = served_precision(manifest, precision)
    try:
        spec = manifest[GRAPH_ENTRIES[chosen]]
        data = (directory / spec["file"]).read_bytes()
    except (OSError, KeyError, TypeError) as exc:
        raise WeightsError(f"cannot read the {chosen} ONNX model in {directory}: {exc}") from exc
    if sha256_bytes(data) != spec.get("sha256"):
        raise WeightsError(f"{spec['file']}: sha256 does not match {directory / 'manifest.json'}")
    try:
        session = ort.InferenceSession(data, session_options(threads or available_cpus()),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception classes, not exported as one base
        raise WeightsError(f"onnxruntime cannot load {spec['file']}: {exc}") from exc
    model = LoadedModel(session=session, manifest=manifest, precision=chosen,
                        flip=bool(manifest.get("flip_average", False)) if flip is None else flip)
    size = manifest["input"]["size"]
    model.predict([np.zeros((size, size), dtype=np.uint8)])
    return model
