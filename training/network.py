"""The ResNet9 in torch: its one definition, and the export of trained weights.

Training, evaluation, the tests and the benchmark's prototype path import the network
from here.  The Lambda never does: it runs the ONNX graph that ``export_weights``
writes beside the fp16 state_dict (function/emotion/model.py), so its image holds no
torch.
"""
from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "function"))

from emotion.model import (CLASSES, FER2013_IDS, INPUT_SIZE, Described, WeightsError, normalise,  # noqa: E402
                           read_manifest, sha256_bytes)

WEIGHTS_FILE = "resnet9_fer2013.fp16.pt"
ONNX_FILE = "resnet9_fer2013.onnx"
ONNX_OPSET = 17
# manifest keys that describe graphs made from the weights (training.quantize adds the int8 ones)
DERIVED_GRAPHS = ("onnx", "onnx_int8", "serves")


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


def cast_floats(state: dict, dtype: torch.dtype) -> dict:
    """A state_dict with its floating-point entries in ``dtype``, on the CPU; the rest
    (BatchNorm's batch counters) as they are."""
    return {k: (v.to(dtype) if v.is_floating_point() else v).cpu() for k, v in state.items()}


def network_from_state(state: dict, in_channels: int = 1, num_classes: int = 7) -> ResNet:
    """A ResNet in eval mode holding ``state`` (fp16 or fp32) in fp32."""
    net = ResNet(in_channels, num_classes)
    net.load_state_dict(cast_floats(state, torch.float32))
    return net.eval()


@dataclass(frozen=True)
class TorchModel(Described):
    """The shipped weights as a torch network (eval mode, fp32), for evaluation and
    further training; the same ``preprocess`` arithmetic as the Lambda's."""

    net: nn.Module
    manifest: dict

    def preprocess(self, faces) -> torch.Tensor:
        """Grey uint8 crops (N, 48, 48) -> the normalised batch (emotion.model.normalise)."""
        x = torch.from_numpy(normalise(np.stack(list(faces)), self.manifest["input"]))
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict(self, faces) -> np.ndarray:
        """Calibrated probabilities, as the Lambda's ``predict``: softmax(logits / temperature),
        the logits averaged with the mirror image's when the manifest says ``flip_average``."""
        device = next(self.net.parameters()).device
        x = self.preprocess(faces).to(device)
        logits = self.net(x).float()
        if self.flip_average:
            logits = (logits + self.net(torch.flip(x, dims=[3])).float()) / 2
        return torch.softmax(logits / self.temperature, dim=1).cpu().numpy()


def load_network(directory: Path | str) -> TorchModel:
    """The fp16 state_dict of ``directory`` as an fp32 ResNet in eval mode, refusing
    weights whose sha256 differs from the manifest's."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    try:
        data = (directory / manifest["weights"]).read_bytes()
    except (OSError, KeyError) as exc:
        raise WeightsError(f"cannot read the weights in {directory}: {exc}") from exc
    if sha256_bytes(data) != manifest.get("sha256"):
        raise WeightsError(f"{manifest['weights']}: sha256 does not match {directory / 'manifest.json'}")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    net = network_from_state(state, manifest["input"]["channels"], len(manifest["classes"]))
    return TorchModel(net=net.to(memory_format=torch.channels_last), manifest=manifest)


def onnx_bytes(state: dict, in_channels: int = 1, num_classes: int = 7) -> bytes:
    """The network with the fp16 ``state`` as an ONNX graph (opset 17, batch size free).

    The weights stay fp16 in the file, each behind a Cast to fp32, so the graph holds
    exactly the shipped values at half the size of fp32; BatchNorm stays a node of
    its own (OpenCV folds it into the convolution in fp32 at load).  The initialisers
    keep the state_dict's names."""
    import onnx  # training-side only, like torch
    from onnx import TensorProto, helper, numpy_helper

    net = network_from_state(state, in_channels, num_classes)
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, in_channels, INPUT_SIZE, INPUT_SIZE), buffer, dynamo=False,
                      input_names=["faces"], output_names=["logits"],
                      dynamic_axes={"faces": {0: "n"}, "logits": {0: "n"}}, opset_version=ONNX_OPSET,
                      do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
    graph_model = onnx.load_from_string(buffer.getvalue())
    graph = graph_model.graph
    initialisers, casts = [], []
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype != np.float32:
            initialisers.append(init)
            continue
        half = value.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), value):
            raise ValueError(f"{init.name} is not fp16-exact")
        initialisers.append(numpy_helper.from_array(half, f"{init.name}.fp16"))
        casts.append(helper.make_node("Cast", [f"{init.name}.fp16"], [init.name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.initializer[:], graph.node[:]
    graph.initializer.extend(initialisers)
    graph.node.extend(nodes)
    onnx.checker.check_model(graph_model)
    return graph_model.SerializeToString()


def export_weights(model: nn.Module, directory: Path, manifest: dict) -> dict:
    """Write the weights in fp16, the same weights as an ONNX graph (what the Lambda
    runs; see add_onnx), and a manifest that records the sha256 of both.

    ``manifest`` holds what only the caller knows (input normalisation, metrics,
    training); the architecture, classes, file names and sha256s are filled in here.
    The manifest is written last, so a reader never sees a sha256 of other bytes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    state = cast_floats(model.state_dict(), torch.float16)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    (directory / WEIGHTS_FILE).write_bytes(weights)
    full = {
        "architecture": "resnet9",
        "classes": list(CLASSES),
        "fer2013_ids": list(FER2013_IDS),
        # the graphs are made here from these weights: none of another export's carries over
        **{k: v for k, v in manifest.items() if k not in DERIVED_GRAPHS},
        "weights": WEIGHTS_FILE,
        "sha256": sha256_bytes(weights),
    }
    try:
        full["onnx"] = _write_onnx(state, directory)
    except ImportError:  # a training machine without the onnx package (requirements-dev.txt has it)
        print(f"warning: the onnx package is missing, so {directory} has no ONNX graph and the Lambda "
              f"cannot load it; add it with: python -m training.network {directory}", file=sys.stderr)
    write_manifest(directory, full)
    return full


def add_onnx(directory: Path) -> dict:
    """(Re)write the ONNX graph of ``directory`` from its fp16 state_dict, and its
    entry in the manifest; nothing else in the manifest changes, unless the graph's
    bytes do: then the int8 graph made from the old one is no longer served (run
    python -m training.quantize again)."""
    model = load_network(directory)  # read once, sha256 checked; fp16 -> fp32 -> fp16 is exact
    state = cast_floats(model.net.state_dict(), torch.float16)
    entry = _write_onnx(state, directory)
    manifest = dict(model.manifest)
    if manifest.get("onnx", {}).get("sha256") != entry["sha256"]:  # the int8 graph was made from another one
        manifest = {k: v for k, v in manifest.items() if k not in DERIVED_GRAPHS}
    manifest["onnx"] = entry
    write_manifest(directory, manifest)
    return manifest


def _write_onnx(state: dict, directory: Path) -> dict:
    graph = onnx_bytes(state)
    (directory / ONNX_FILE).write_bytes(graph)
    return {"file": ONNX_FILE, "sha256": sha256_bytes(graph), "opset": ONNX_OPSET,
            "input": "faces: float32 (N, 1, 48, 48), normalised as input says",
            "output": "logits: float32 (N, 7), in the order of classes",
            "weights": "the fp16 weights of the state_dict, each cast to fp32 in the graph"}


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write ``directory``'s manifest.json atomically (a temporary file, then a rename)."""
    tmp = directory / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(directory / "manifest.json")


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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="(Re)write the ONNX graph of a model directory "
                                                 "from its fp16 weights, and its entry in the manifest.")
    parser.add_argument("model_dir", type=Path, nargs="?", default=Path(__file__).resolve().parents[1] / "layers" / "model")
    args = parser.parse_args()
    onnx_entry = add_onnx(args.model_dir)["onnx"]
    print(f"wrote {args.model_dir / onnx_entry['file']} (sha256 {onnx_entry['sha256'][:12]})")
