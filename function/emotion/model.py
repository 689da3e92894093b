"""The ResNet9 emotion classifier and the loading of its shipped weights.

This is the ONE definition of the network: training, evaluation and the Lambda all
import it.  Nothing here knows about Lambda, API Gateway or S3.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# FER2013's own class ids: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
# Our logits are in the same order; these are the names the service returns.
CLASSES = ("ANGRY", "DISGUST", "FEAR", "HAPPY", "SAD", "SURPRISE", "NEUTRAL")
FER2013_IDS = (0, 1, 2, 3, 4, 5, 6)
INPUT_SIZE = 48


def conv_block(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ELU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """The prototype's ResNet9: 1x48x48 grey input, 7 logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 7):
        super().__init__()
        self.conv1 = conv_block(in_channels, 128)
        self.conv2 = conv_block(128, 128, pool=True)
        self.res1 = nn.Sequential(conv_block(128, 128), conv_block(128, 128))
        self.drop1 = nn.Dropout(0.5)
        self.conv3 = conv_block(128, 256)
        self.conv4 = conv_block(256, 256, pool=True)
        self.res2 = nn.Sequential(conv_block(256, 256), conv_block(256, 256))
        self.drop2 = nn.Dropout(0.5)
        self.conv5 = conv_block(256, 512)
        self.conv6 = conv_block(512, 512, pool=True)
        self.res3 = nn.Sequential(conv_block(512, 512), conv_block(512, 512))
        self.drop3 = nn.Dropout(0.5)
        self.classifier = nn.Sequential(nn.MaxPool2d(6), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.conv2(out)
        out = self.res1(out) + out
        out = self.drop1(out)
        out = self.conv3(out)
        out = self.conv4(out)
        out = self.res2(out) + out
        out = self.drop2(out)
        out = self.conv5(out)
        out = self.conv6(out)
        out = self.res3(out) + out
        out = self.drop3(out)
        return self.classifier(out)


ResNet9 = ResNet


class WeightsError(RuntimeError):
    """The shipped weights are missing, corrupt or do not match their manifest."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_weights(model: nn.Module, directory: Path, manifest: dict,
                   filename: str = "resnet9_fer2013.fp16.pt") -> dict:
    """Write the weights in fp16 and a manifest that records their sha256.

    ``manifest`` holds what only the caller knows (input normalisation, metrics,
    training); the architecture, classes, file name and sha256 are filled in here.
    The manifest is written last, so a reader never sees a sha256 of other bytes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    (directory / filename).write_bytes(data)
    full = {
        "architecture": "resnet9",
        "classes": list(CLASSES),
        "fer2013_ids": list(FER2013_IDS),
        **manifest,
        "weights": filename,
        "sha256": _sha256(data),
    }
    tmp = directory / "manifest.json.tmp"
    tmp.write_text(json.dumps(full, indent=2) + "\n")
    tmp.replace(directory / "manifest.json")
    return full


def state_dict_from_prototype(obj) -> dict:
    """A state_dict from what the prototype saved: a state_dict, a whole pickled
    model, or a checkpoint dict, possibly with DataParallel's ``module.`` prefix."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    return {k.removeprefix("module."): v for k, v in obj.items()}


@dataclass(frozen=True)
class LoadedModel:
    """The network in eval mode plus what its manifest says about it."""

    net: nn.Module
    manifest: dict

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    def preprocess(self, faces: list[np.ndarray]) -> torch.Tensor:
        """Grey uint8 crops already resized to 48x48 -> the normalised batch."""
        spec = self.manifest["input"]
        x = torch.from_numpy(np.stack(faces)).float().unsqueeze(1)
        x = (x / spec["scale"] - spec["mean"]) / spec["std"]
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict(self, faces: list[np.ndarray]) -> np.ndarray:
        """Class probabilities, shape (len(faces), 7), for 48x48 grey uint8 crops,
        in one batched forward pass."""
        if not faces:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        logits = self.net(self.preprocess(faces))
        return torch.softmax(logits.float(), dim=1).numpy()


def fold_batchnorm(net: ResNet) -> ResNet:
    """Fold every BatchNorm of ``net`` into the convolution before it, in place, and
    return ``net`` in eval mode: the same function with one pass over each activation
    fewer.  Only for inference; its state_dict no longer has the prototype's keys."""
    net.eval()
    for block in net.modules():
        if (isinstance(block, nn.Sequential) and len(block) >= 2
                and isinstance(block[0], nn.Conv2d) and isinstance(block[1], nn.BatchNorm2d)):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return net


def available_cpus() -> int:
    """How many CPUs this process may run on (not how many the host has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_available_cpus() -> int:
    """Make torch use one thread per available CPU, and return that number."""
    n = available_cpus()
    torch.set_num_threads(n)
    return n


def load_model(directory: Path | str, fold: bool = True) -> LoadedModel:
    """Load the shipped weights of ``directory`` (manifest.json + weights file),
    refusing weights whose sha256 differs from the manifest's.  ``fold`` folds the
    BatchNorms into the convolutions (fold_batchnorm) for inference; pass False for
    a network with the prototype's modules, to train it further."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        data = (directory / manifest["weights"]).read_bytes()
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"cannot read the model in {directory}: {exc}") from exc
    if _sha256(data) != manifest.get("sha256"):
        raise WeightsError(f"{manifest['weights']}: sha256 does not match {directory / 'manifest.json'}")
    if manifest.get("architecture") != "resnet9" or len(manifest.get("classes", ())) != 7:
        raise WeightsError("manifest does not describe a 7-class resnet9")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    net = ResNet(in_channels=manifest["input"]["channels"], num_classes=len(manifest["classes"]))
    net.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    if fold:
        net = fold_batchnorm(net)
    net.eval().to(memory_format=torch.channels_last)
    return LoadedModel(net=net, manifest=manifest)
