"""Shared pieces of training and evaluation: the data set, normalisation, metrics."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "function"))

from emotion.model import CLASSES, WeightsError, normalise  # noqa: E402
from training.network import ResNet, TorchModel, load_network, write_manifest  # noqa: E402  (the one definition of the network)

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


def load_publictest(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """FER2013's 3,589 PublicTest faces and labels of ``path``; FileNotFoundError or
    ValueError, with a message saying what is wrong, for a missing file or other rows."""
    if not path.exists():
        raise FileNotFoundError(f"no data at {path} (FER2013 npz: images, labels, usage; "
                                "see ../shared/data/fer2013/README)")
    images, labels = load_split(path, PUBLIC_TEST)
    if len(labels) != 3589:
        raise ValueError(f"{path}: {len(labels)} PublicTest rows, not FER2013's 3,589")
    return images, labels


def has_usage(path: Path) -> bool:
    """Whether the npz says which rows are Training and which PublicTest."""
    with np.load(path) as data:
        return "usage" in data.files


def input_spec(mean: float, std: float) -> dict:
    """The manifest's ``input``: how a 48x48 uint8 crop becomes the network's input,
    ``(pixel / scale - mean) / std``.  Written once, at export; from then on every
    user of the shipped weights (the Lambda, evaluate.py, train.py's own metrics of
    the exported weights) normalises through ``emotion.model.normalise`` and this dict."""
    return {"size": 48, "channels": 1, "scale": 255.0, "mean": round(mean, 6), "std": round(std, 6)}


def to_tensor(images: np.ndarray, mean: float, std: float, scale: float = 255.0) -> torch.Tensor:
    """uint8 (N,48,48) -> normalised float (N,1,48,48), as the model expects: the
    Lambda's own ``emotion.model.normalise``; training uses it on its unrounded mean/std."""
    return torch.from_numpy(normalise(images, {"scale": scale, "mean": mean, "std": std}))


def _probs(model: torch.nn.Module, images: np.ndarray, mean: float | None, std: float | None,
           flip: bool, batch_size: int, preprocess: Callable[[np.ndarray], torch.Tensor] | None):
    """Softmax probabilities of the images and, with flip, of their mirror images."""
    if preprocess is None:
        if mean is None or std is None:
            raise ValueError("give mean and std, or preprocess")
        preprocess = lambda b: to_tensor(b, mean, std).contiguous(memory_format=torch.channels_last)  # noqa: E731
    model.eval()
    device = next(model.parameters()).device
    plain, mirrored = [], []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size]).to(device)
        plain.append(torch.softmax(model(x).float(), dim=1).cpu())
        if flip:
            mirrored.append(torch.softmax(model(torch.flip(x, dims=[3])).float(), dim=1).cpu())
    return plain, mirrored


def _cat(chunks: list[torch.Tensor]) -> np.ndarray:
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, len(CLASSES)), np.float32)


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, images: np.ndarray, mean: float | None = None,
                  std: float | None = None, flip: bool = False, batch_size: int = 256,
                  preprocess: Callable[[np.ndarray], torch.Tensor] | None = None) -> np.ndarray:
    """Softmax probabilities for uint8 images; with flip, averaged with the mirrored image.

    Normalisation: ``preprocess`` (e.g. ``TorchModel.preprocess``, which reads the
    manifest's ``input``) or else ``to_tensor`` with ``mean`` and ``std``."""
    plain, mirrored = _probs(model, images, mean, std, flip, batch_size, preprocess)
    if flip:
        return _cat([(p + q) / 2 for p, q in zip(plain, mirrored)])
    return _cat(plain)


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


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, mean: float | None = None,
             std: float | None = None, preprocess: Callable[[np.ndarray], torch.Tensor] | None = None,
             batch_size: int = 256) -> dict:
    """Metrics without and with horizontal-flip test-time averaging (two forward passes
    per image; the plain probabilities serve both), and the predicted classes of both
    (``predicted``)."""
    plain, mirrored = _probs(model, images, mean, std, True, batch_size, preprocess)
    predicted = {"plain": _cat(plain).argmax(1), "flip": _cat([(p + q) / 2 for p, q in zip(plain, mirrored)]).argmax(1)}
    return {"plain": metrics(labels, predicted["plain"]), "flip": metrics(labels, predicted["flip"]),
            "predicted": predicted}


def evaluate_loaded(loaded: TorchModel, images: np.ndarray, labels: np.ndarray) -> dict:
    """``evaluate`` of shipped weights, normalised as their manifest says."""
    return evaluate(loaded.net, images, labels, preprocess=loaded.preprocess)


# ---- the figures in the manifest -----------------------------------------------------

SAMPLE_N, SAMPLE_SEED = 500, 0


def fixed_sample(images: np.ndarray, labels: np.ndarray, n: int = SAMPLE_N,
                 seed: int = SAMPLE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The same n rows every time: ``default_rng(seed).choice(len, n, replace=False)``,
    sorted (all rows when there are no more than n)."""
    rows = np.sort(np.random.default_rng(seed).choice(len(labels), min(n, len(labels)), replace=False))
    return images[rows], labels[rows]


def sample_figures(labels: np.ndarray, probs: np.ndarray, seed: int = SAMPLE_SEED) -> dict:
    """``metrics.sample`` of the manifest: plain predictions (what the service computes,
    no flip averaging) on ``fixed_sample`` of PublicTest, rounded as ``metrics`` rounds."""
    m = metrics(labels, probs.argmax(1))
    return {"n": m["n"], "seed": seed, "flip": False, "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"], "recall": m["recall"]}


def sample_probs(loaded: TorchModel, images: np.ndarray) -> np.ndarray:
    """Plain probabilities of the shipped weights, batched as every caller of
    ``sample_figures`` batches them (so the figures reproduce exactly)."""
    return predict_probs(loaded.net, images, preprocess=loaded.preprocess)


def shipped_metrics(loaded: TorchModel, images: np.ndarray, labels: np.ndarray,
                    full: dict | None = None, data: Path | None = None) -> dict:
    """The manifest's ``metrics`` for the weights as shipped (fp16, normalised by the
    manifest): all of PublicTest plain and flip-averaged, and ``sample``.
    ``full``: ``evaluate_loaded`` of these same images, if already computed."""
    full = full or evaluate_loaded(loaded, images, labels)
    s_images, s_labels = fixed_sample(images, labels)
    out = {"split": "FER2013 PublicTest", "weights": "shipped fp16", "n": full["plain"]["n"],
           "accuracy": full["plain"]["accuracy"], "macro_f1": full["plain"]["macro_f1"],
           "accuracy_flip": full["flip"]["accuracy"], "macro_f1_flip": full["flip"]["macro_f1"],
           "recall": full["plain"]["recall"], "recall_flip": full["flip"]["recall"],
           "sample": sample_figures(s_labels, sample_probs(loaded, s_images))}
    if data is not None:
        out.update(data=data.name, data_sha256=sha256_file(data))
        votes = data.with_name("ferplus_votes_train_val.npz")
        if votes.exists() and has_usage(data):
            with np.load(data) as arrays:
                index = arrays["index"][arrays["usage"] == PUBLIC_TEST]
            if len(index) == len(labels):  # all of PublicTest (not training's --limit)
                out["ferplus_majority"] = ferplus_majority(full["predicted"], index, votes)
    return out


def ferplus_majority(predicted: dict, index: np.ndarray, votes: Path) -> dict:
    """Accuracy of predictions (``evaluate``'s ``predicted``) of the rows whose original
    csv row numbers are ``index`` against FER+'s majority labels (training/ferplus.py),
    plain and flip-averaged."""
    from training.ferplus import load_votes, majority_accuracy, majority_labels
    majority = majority_labels(load_votes(votes, index), index)
    return {"labels": "FER+ majority vote among the ten columns, rows led by one of the seven shared classes",
            "votes_sha256": sha256_file(votes),
            **{k: majority_accuracy(predicted[k], majority) for k in ("plain", "flip")}}


def update_manifest(model_dir: Path, images: np.ndarray, labels: np.ndarray, full: dict | None = None,
                    data: Path | None = None, loaded: TorchModel | None = None) -> dict:
    """Recompute ``metrics`` of ``model_dir``'s manifest from the shipped weights
    (sha256-checked) on PublicTest ``images``/``labels`` and rewrite manifest.json
    atomically; the weights file, its sha256 and every other key stay as they are.
    ``loaded``/``full``: ``load_network(model_dir)`` and its ``evaluate_loaded`` on these
    images, if the caller has them already."""
    model_dir = Path(model_dir)
    loaded = loaded or load_network(model_dir)
    new_metrics = shipped_metrics(loaded, images, labels, full=full, data=data)
    return set_manifest_keys(model_dir, {"metrics": new_metrics},
                             {"sha256": loaded.sha256, "weights": loaded.manifest["weights"]})


def set_manifest_keys(model_dir: Path, values: dict, expected: dict) -> dict:
    """Set ``values``' keys in ``model_dir``'s manifest.json in one atomic write, keeping
    every other key; refused when the manifest no longer holds ``expected`` (the weights
    the values were computed for)."""
    path = Path(model_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    if any(manifest.get(k) != v for k, v in expected.items()):
        raise WeightsError(f"{path} changed while its {', '.join(values)} was computed; run again")
    manifest.update(values)
    write_manifest(Path(model_dir), manifest)
    return manifest


__all__ = ["CLASSES", "DEFAULT_DATA", "PUBLIC_TEST", "ROOT", "ResNet", "SAMPLE_N", "SAMPLE_SEED", "TRAINING",
           "evaluate", "evaluate_loaded", "ferplus_majority", "fixed_sample", "has_usage", "input_spec", "load_publictest", "load_split", "metrics",
           "predict_probs", "sample_figures", "sample_probs", "sha256_file", "shipped_metrics", "to_tensor",
           "update_manifest"]
