"""The shipped emotion classifier, run by OpenCV's DNN module: no torch at run time.

The ResNet9 is trained in torch (training/network.py holds the network's one
definition) and shipped twice in layers/model/: its fp16 state_dict, which training
and evaluation read, and the same weights as an ONNX graph, which is what serves.  This
module loads the ONNX graph with ``cv2.dnn`` (OpenCV is already here for the face
detector), checks its sha256 against the manifest, and turns 48x48 grey crops into
class probabilities, calibrated by the manifest's temperature.  Nothing here knows
about Lambda, API Gateway or S3.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

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
    def temperature(self) -> float:
        """The logits are divided by it before the softmax, so that a confidence of 0.7
        is right about 70 % of the time (the manifest's ``calibration``, fitted by
        ``python -m training.calibrate``); 1 when the manifest has none."""
        return float(self.manifest.get("calibration", {}).get("temperature", 1.0))


@dataclass
class LoadedModel(Described):
    """The network, ready to run, plus what its manifest says about it."""

    net: cv2.dnn.Net
    manifest: dict
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def logits(self, faces: list[np.ndarray]) -> np.ndarray:
        """Logits, shape (len(faces), 7), of 48x48 grey uint8 crops, in one forward pass
        (not divided by the temperature)."""
        x = normalise(np.stack(faces), self.manifest["input"])
        with self._lock:  # a cv2.dnn.Net runs one forward pass at a time
            self.net.setInput(x)
            return self.net.forward().astype(np.float32)

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
    """Make OpenCV (detection and the network) use one thread per available CPU, and
    return that number."""
    n = available_cpus()
    cv2.setNumThreads(n)
    return n


def read_manifest(directory: Path | str) -> dict:
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {directory / 'manifest.json'}: {exc}") from exc
    if manifest.get("architecture") != "resnet9" or len(manifest.get("classes", ())) != 7:
        raise WeightsError("manifest does not describe a 7-class resnet9")
    return manifest


def load_model(directory: Path | str) -> LoadedModel:
    """Load the ONNX graph of ``directory`` (manifest.json's ``onnx``), refusing a file
    whose sha256 differs from the manifest's, and run it once on a blank face: OpenCV
    prepares the network (BatchNorm folded into the convolutions, Winograd transforms
    of their weights) on its first forward pass, which belongs to the cold start, not
    to the first request."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    try:
        spec = manifest["onnx"]
        data = (directory / spec["file"]).read_bytes()
    except (OSError, KeyError, TypeError) as exc:
        raise WeightsError(f"cannot read the ONNX model in {directory}: {exc}") from exc
    if sha256_bytes(data) != spec.get("sha256"):
        raise WeightsError(f"{spec['file']}: sha256 does not match {directory / 'manifest.json'}")
    try:
        net = cv2.dnn.readNetFromONNX(np.frombuffer(data, dtype=np.uint8))
    except cv2.error as exc:
        raise WeightsError(f"OpenCV cannot read {spec['file']}: {exc}") from exc
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    model = LoadedModel(net=net, manifest=manifest)
    size = manifest["input"]["size"]
    model.predict([np.zeros((size, size), dtype=np.uint8)])
    return model
