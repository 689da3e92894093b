"""Shared pieces of training and evaluation: the data set, normalisation, metrics."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "function"))

from emotion.model import CLASSES, ResNet  # noqa: E402  (the one definition of the network)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013_train_val.npz"
TRAINING, PUBLIC_TEST = 0, 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_split(path: Path, usage: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,48,48) uint8 and labels (N,) int64 of one split (None: every row)."""
    with np.load(path) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
        if usage is not None and "usage" in data:
            keep = data["usage"] == usage
            images, labels = images[keep], labels[keep]
    return images, labels


def to_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N,48,48) -> normalised float (N,1,48,48), as the model expects."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.sub_(mean).div_(std).unsqueeze(1)


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, images: np.ndarray, mean: float, std: float,
                  flip: bool = False, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities for uint8 images; with flip, averaged with the mirrored image."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start:start + batch_size], mean, std).contiguous(memory_format=torch.channels_last)
        probs = torch.softmax(model(x).float(), dim=1)
        if flip:
            probs = (probs + torch.softmax(model(torch.flip(x, dims=[3])).float(), dim=1)) / 2
        out.append(probs.numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)


def metrics(labels: np.ndarray, predicted: np.ndarray, n_classes: int = len(CLASSES)) -> dict:
    """Accuracy, macro-F1, per-class precision/recall and the confusion matrix (rows: truth)."""
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    tp = np.diag(confusion).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(tp / confusion.sum(axis=0))
        recall = np.nan_to_num(tp / confusion.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return {
        "n": int(len(labels)),
        "accuracy": round(float(tp.sum() / max(len(labels), 1)), 4),
        "macro_f1": round(float(f1.mean()), 4),
        "precision": {c: round(float(p), 4) for c, p in zip(CLASSES, precision)},
        "recall": {c: round(float(r), 4) for c, r in zip(CLASSES, recall)},
        "confusion": confusion.tolist(),
    }


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> dict:
    """Metrics without and with horizontal-flip test-time averaging."""
    return {
        "plain": metrics(labels, predict_probs(model, images, mean, std).argmax(1)),
        "flip": metrics(labels, predict_probs(model, images, mean, std, flip=True).argmax(1)),
    }


__all__ = ["CLASSES", "DEFAULT_DATA", "PUBLIC_TEST", "ROOT", "ResNet", "TRAINING", "evaluate",
           "load_split", "metrics", "predict_probs", "sha256_file", "to_tensor"]
