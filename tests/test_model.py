"""The ResNet9, its shipped weights (layers/model/) and the figures in their manifest.

Real and fast: the real FER2013 PublicTest rows (500 fixed ones), the real weights, the
real training step.  Nothing is skipped: without the FER2013 npz or the shipped model the
tests that need them fail and say what is missing.

``metrics.sample`` of the manifest is written by
``python -m training.evaluate --update-manifest`` (and by training.train at each export);
the test below recomputes it and must find the same figures.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.common import (DEFAULT_DATA, PUBLIC_TEST, ROOT, SAMPLE_N, SAMPLE_SEED, TRAINING, fixed_sample,
                             load_split, metrics, predict_probs, sample_figures, sample_probs, to_tensor)
from training.average import average_states, recompute_batchnorm
from training.train import augment, parse_args, train_step
from emotion.model import CLASSES, FER2013_IDS, LoadedModel, WeightsError, load_model
from training.network import ONNX_FILE, ResNet, ResNet9, TorchModel, load_network, state_dict_from_prototype

# The suite tests layers/model/; MODEL_UNDER_TEST points these tests at a candidate instead.
MODEL_DIR = Path(os.environ.get("MODEL_UNDER_TEST") or ROOT / "layers" / "model")
DATA = Path(os.environ.get("FER2013_NPZ") or DEFAULT_DATA)

# If the logits were read in alphabetical order instead of FER2013's.
ALPHABETICAL = ("ANGRY", "DISGUST", "FEAR", "HAPPY", "NEUTRAL", "SAD", "SURPRISE")


# ---- the architecture, from the prototype's spec ------------------------------------------

# conv_block(in, out, pool) = Conv2d(in, out, 3, padding=1) -> BatchNorm2d(out) -> ELU (-> MaxPool2d(2))
SPEC_BLOCKS = [  # (state_dict prefix, in, out, pool)
    ("conv1", 1, 128, False),
    ("conv2", 128, 128, True),
    ("res1.0", 128, 128, False),
    ("res1.1", 128, 128, False),
    ("conv3", 128, 256, False),
    ("conv4", 256, 256, True),
    ("res2.0", 256, 256, False),
    ("res2.1", 256, 256, False),
    ("conv5", 256, 512, False),
    ("conv6", 512, 512, True),
    ("res3.0", 512, 512, False),
    ("res3.1", 512, 512, False),
]


def spec_state_dict() -> list[tuple[str, tuple[int, ...]]]:
    """Every state_dict key of the prototype's ResNet9 with its shape, in order."""
    keys = []
    for name, cin, cout, _ in SPEC_BLOCKS:
        keys += [(f"{name}.0.weight", (cout, cin, 3, 3)), (f"{name}.0.bias", (cout,)),
                 (f"{name}.1.weight", (cout,)), (f"{name}.1.bias", (cout,)),
                 (f"{name}.1.running_mean", (cout,)), (f"{name}.1.running_var", (cout,)),
                 (f"{name}.1.num_batches_tracked", ())]
    return keys + [("classifier.2.weight", (7, 512)), ("classifier.2.bias", (7,))]


def spec_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The prototype's forward, written out: three residual stages, then the classifier."""
    out = m.conv2(m.conv1(x))
    out = m.drop1(m.res1(out) + out)
    out = m.conv4(m.conv3(out))
    out = m.drop2(m.res2(out) + out)
    out = m.conv6(m.conv5(out))
    out = m.drop3(m.res3(out) + out)
    return m.classifier(out)


def test_state_dict_keys_and_shapes():
    expected = spec_state_dict()
    assert len(expected) == 12 * 7 + 2
    # a few of them spelled out, so the expansion above cannot drift unnoticed
    assert expected[:7] == [("conv1.0.weight", (128, 1, 3, 3)), ("conv1.0.bias", (128,)),
                            ("conv1.1.weight", (128,)), ("conv1.1.bias", (128,)),
                            ("conv1.1.running_mean", (128,)), ("conv1.1.running_var", (128,)),
                            ("conv1.1.num_batches_tracked", ())]
    assert ("res1.0.0.weight", (128, 128, 3, 3)) in expected
    assert ("conv3.0.weight", (256, 128, 3, 3)) in expected
    assert ("res3.1.1.running_var", (512,)) in expected
    assert expected[-2:] == [("classifier.2.weight", (7, 512)), ("classifier.2.bias", (7,))]

    actual = [(k, tuple(v.shape)) for k, v in ResNet().state_dict().items()]
    assert actual == expected


def test_module_structure():
    assert ResNet9 is ResNet
    m = ResNet()
    for name, cin, cout, pool in SPEC_BLOCKS:
        block = m.get_submodule(name)
        kinds = [type(layer) for layer in block]
        assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ELU] + ([nn.MaxPool2d] if pool else []), name
        conv = block[0]
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (cin, cout, (3, 3), (1, 1))
        assert block[1].num_features == cout
        if pool:
            assert block[3].kernel_size == 2
    for name in ("drop1", "drop2", "drop3"):
        assert isinstance(getattr(m, name), nn.Dropout) and getattr(m, name).p == 0.5
    pool, flatten, linear = m.classifier
    assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 6
    assert isinstance(flatten, nn.Flatten)
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (512, 7)


def test_forward_shape_and_wiring():
    torch.manual_seed(0)
    m = ResNet().eval()
    x = torch.randn(3, 1, 48, 48)
    with torch.inference_mode():
        out = m(x)
        assert out.shape == (3, 7)
        assert torch.equal(out, spec_forward(m, x))
        # the shapes between the stages: 48 -> 24 -> 12 -> 6 -> 1
        assert m.conv2(m.conv1(x)).shape == (3, 128, 24, 24)
        assert m.res2(torch.zeros(1, 256, 12, 12)).shape == (1, 256, 12, 12)
        assert m.res3(torch.zeros(1, 512, 6, 6)).shape == (1, 512, 6, 6)


# ---- the prototype's saved formats ---------------------------------------------------------

def _roundtrip(obj, weights_only: bool):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=weights_only)


def test_prototype_formats_load_with_identical_outputs():
    torch.manual_seed(1)
    proto = ResNet()
    with torch.no_grad():  # make the BatchNorm statistics something other than their defaults
        proto.train()(torch.randn(4, 1, 48, 48) * 2 + 0.5)
    proto.eval()
    x = torch.randn(2, 1, 48, 48)
    with torch.inference_mode():
        expected = proto(x)

    state = proto.state_dict()
    formats = {
        "DataParallel state_dict (module.)": _roundtrip({f"module.{k}": v for k, v in state.items()}, True),
        "checkpoint dict": _roundtrip({"epoch": 30, "model_state_dict": state, "optimizer": {}}, True),
        "whole pickled model": _roundtrip(proto, False),
        "whole pickled DataParallel": _roundtrip(nn.DataParallel(copy.deepcopy(proto)), False),
    }
    for name, obj in formats.items():
        net = ResNet()
        net.load_state_dict(state_dict_from_prototype(obj))  # strict: every key, no extra one
        with torch.inference_mode():
            assert torch.equal(net.eval()(x), expected), name


# ---- the shipped weights and their manifest ------------------------------------------------

@pytest.fixture(scope="module")
def manifest() -> dict:
    path = MODEL_DIR / "manifest.json"
    if not path.exists():
        pytest.fail(f"no shipped model: {path} is missing (train with `make train`, see README)")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def loaded(manifest) -> TorchModel:
    """The shipped fp16 weights as a torch network (training and evaluation)."""
    return load_network(MODEL_DIR)


@pytest.fixture(scope="module")
def served(manifest) -> LoadedModel:
    """The same weights in the fp32 ONNX graph, run as the Lambda runs it (onnxruntime).
    The int8 graph made from it: tests/test_precision.py."""
    return load_model(MODEL_DIR, precision="fp32")


def test_manifest_has_required_keys(manifest):
    assert manifest["architecture"] == "resnet9"
    assert manifest["classes"] == ["ANGRY", "DISGUST", "FEAR", "HAPPY", "SAD", "SURPRISE", "NEUTRAL"]
    assert list(CLASSES) == manifest["classes"]
    assert manifest["fer2013_ids"] == [0, 1, 2, 3, 4, 5, 6] == list(FER2013_IDS)
    spec = manifest["input"]
    assert (spec["size"], spec["channels"], spec["scale"]) == (48, 1, 255.0)
    assert 0.3 < spec["mean"] < 0.7 and 0.1 < spec["std"] < 0.4, spec  # FER2013's: about 0.51 and 0.25
    assert isinstance(manifest["weights"], str) and len(manifest["sha256"]) == 64
    for key in ("accuracy", "macro_f1", "accuracy_flip", "macro_f1_flip", "sample"):
        assert key in manifest["metrics"], f"manifest metrics lack {key!r}: run python -m training.evaluate --update-manifest"
    for key in ("command", "epochs", "git_commit", "data_sha256"):
        assert key in manifest["training"], key


def test_shipped_weights_load_and_match_manifest(manifest, loaded):
    data = (MODEL_DIR / manifest["weights"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"] == loaded.sha256
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    assert [(k, tuple(v.shape)) for k, v in state.items()] == spec_state_dict()
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert isinstance(loaded.net, ResNet) and not loaded.net.training
    assert loaded.classes == CLASSES


def test_the_onnx_graph_holds_exactly_the_shipped_weights(manifest, served):
    """What the Lambda runs is the fp16 state_dict, value for value: not a stale export."""
    import onnx
    from onnx import numpy_helper
    entry = manifest["onnx"]
    data = (MODEL_DIR / entry["file"]).read_bytes()
    assert entry["file"] == ONNX_FILE and hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert served.sha256 == manifest["sha256"] and served.classes == CLASSES
    graph = onnx.load_from_string(data)
    onnx.checker.check_model(graph)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    state = torch.load(MODEL_DIR / manifest["weights"], map_location="cpu", weights_only=True)
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        stored = inits[f"{key}.fp16"]
        assert stored.dtype == np.float16 and np.array_equal(stored, value.numpy()), key
    assert {n.op_type for n in graph.graph.node} == {"Cast", "Conv", "BatchNormalization", "Elu", "MaxPool",
                                                     "Add", "Flatten", "Gemm"}


def test_corrupted_weights_are_refused(manifest, tmp_path):
    shutil.copy(MODEL_DIR / "manifest.json", tmp_path / "manifest.json")
    for name in (manifest["weights"], manifest["onnx"]["file"], manifest["onnx_int8"]["file"]):
        shutil.copy(MODEL_DIR / name, tmp_path / name)
    load_model(tmp_path, "fp32")  # the intact copy loads, in every form
    load_model(tmp_path, "int8")
    load_network(tmp_path)

    load_fp32, load_int8 = (lambda d: load_model(d, "fp32")), (lambda d: load_model(d, "int8"))
    for name, load in ((manifest["weights"], load_network), (manifest["onnx"]["file"], load_fp32),
                       (manifest["onnx_int8"]["file"], load_int8)):
        path = tmp_path / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit of one byte, inside a tensor
        path.write_bytes(bytes(data))
        with pytest.raises(WeightsError, match="sha256"):
            load(tmp_path)

    (tmp_path / "manifest.json").unlink()
    for load in (load_fp32, load_int8, load_network):
        with pytest.raises(WeightsError):
            load(tmp_path)


# ---- predictions on the fixed PublicTest sample ---------------------------------------------

def require_data() -> Path:
    if not DATA.exists():
        pytest.fail(f"FER2013 data not found at {DATA} (expected ../shared/data/fer2013/fer2013_train_val.npz "
                    "beside the repository, or set FER2013_NPZ)")
    return DATA


@pytest.fixture(scope="module")
def public_test() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_split(require_data(), PUBLIC_TEST)
    assert len(labels) == 3589, "not FER2013's PublicTest"
    return images, labels


@pytest.fixture(scope="module")
def sample(public_test, loaded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed 500 PublicTest rows and the shipped model's plain probabilities for them."""
    images, labels = fixed_sample(*public_test)
    return images, labels, sample_probs(loaded, images)


def test_fixed_sample_is_fixed(public_test):
    images, labels = public_test
    rows = np.sort(np.random.default_rng(0).choice(len(labels), 500, replace=False))
    s_images, s_labels = fixed_sample(images, labels, n=500, seed=0)
    assert np.array_equal(s_labels, labels[rows]) and np.array_equal(s_images, images[rows])
    assert set(np.unique(s_labels)) == set(range(7))


def test_preprocessing_agrees_with_training(loaded, served, sample):
    images, _, probs = sample
    spec = loaded.manifest["input"]
    # one normalisation: training's to_tensor and the evaluation's preprocess, bit for bit
    assert torch.equal(to_tensor(images[:16], spec["mean"], spec["std"], spec["scale"]),
                       loaded.preprocess(list(images[:16])))
    # the service's predict gives the torch network's probabilities (the same temperature
    # and flip averaging, if any, applied: tests/test_calibration.py), and in one pass per
    # face the predictions the sample's figures are computed from
    assert served.flip == loaded.flip_average  # the manifest's choice
    served_probs = served.predict(list(images[:100]))
    np.testing.assert_allclose(served_probs, loaded.predict(images[:100]), atol=1e-4)
    one_pass = load_model(MODEL_DIR, precision="fp32", flip=False).predict(list(images[:100]))
    assert (one_pass.argmax(1) == probs[:100].argmax(1)).all()


def test_sample_accuracy_well_above_chance(sample):
    _, labels, probs = sample
    m = metrics(labels, probs.argmax(1))
    majority = np.bincount(labels, minlength=7).max() / len(labels)
    assert majority < 0.3
    assert m["accuracy"] > 0.5, (m["accuracy"], m["recall"])


# Per-class recall floors: far above what the model would score if its outputs were
# read in alphabetical order (SAD, SURPRISE and NEUTRAL then fall to a few percent).
RECALL_FLOOR = {"HAPPY": 0.6, "SURPRISE": 0.5, "NEUTRAL": 0.3, "SAD": 0.2, "ANGRY": 0.2, "FEAR": 0.15,
                "DISGUST": 0.2}


def test_label_mapping_per_class_recall(sample):
    _, labels, probs = sample
    predicted = probs.argmax(1)
    recall = metrics(labels, predicted)["recall"]
    to_fer = np.array([CLASSES.index(name) for name in ALPHABETICAL])  # index i read as ALPHABETICAL[i]
    misread = metrics(labels, to_fer[predicted])["recall"]
    counts = np.bincount(labels, minlength=7)
    checked = []
    for cls, floor in RECALL_FLOOR.items():
        if counts[CLASSES.index(cls)] < 10:  # DISGUST: about 1.5 % of FER2013
            continue
        checked.append(cls)
        assert recall[cls] > floor, (cls, recall)
    assert {"HAPPY", "SURPRISE", "NEUTRAL", "SAD", "ANGRY", "FEAR"} <= set(checked)
    for cls in ("SAD", "SURPRISE", "NEUTRAL"):  # the floors tell the two orders apart
        assert misread[cls] < RECALL_FLOOR[cls] < recall[cls], (cls, recall[cls], misread[cls])


def test_alphabetical_order_would_drop_accuracy(sample):
    _, labels, probs = sample
    predicted = probs.argmax(1)
    to_fer = np.array([CLASSES.index(name) for name in ALPHABETICAL])
    right = (predicted == labels).mean()
    misread = (to_fer[predicted] == labels).mean()
    assert misread < right - 0.15, (right, misread)


def test_manifest_sample_figures_reproduce(manifest, sample):
    _, labels, probs = sample
    recorded = manifest["metrics"].get("sample")
    assert recorded is not None, "manifest has no metrics.sample: run python -m training.evaluate --update-manifest"
    assert (recorded["n"], recorded["seed"]) == (SAMPLE_N, SAMPLE_SEED)
    assert sample_figures(labels, probs) == recorded


# ---- training ------------------------------------------------------------------------------

def test_training_step_lowers_loss():
    images, labels = fixed_sample(*load_split(require_data(), TRAINING), n=16, seed=1)
    mean, std = images.mean() / 255.0, images.std() / 255.0
    x, y = to_tensor(images, mean, std), torch.from_numpy(labels)
    defaults = parse_args([])
    torch.manual_seed(0)
    model = ResNet().to(memory_format=torch.channels_last)  # as train.main makes it
    # the learning rate of the one-cycle schedule's first steps (--lr / 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=defaults.lr / 10, weight_decay=defaults.weight_decay)

    def subset_loss() -> float:  # batch statistics as in training, no dropout, no augmentation
        model.train()
        for layer in (model.drop1, model.drop2, model.drop3):
            layer.eval()
        with torch.no_grad():
            return float(F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y))

    before = subset_loss()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # the real augmentation and step, as train.main runs them
        loss, _ = train_step(model, optimizer, augment(x, gen, defaults.erasing), y,
                             label_smoothing=defaults.label_smoothing, bf16=defaults.bf16)
        assert torch.isfinite(loss)
    after = subset_loss()
    assert np.isfinite(before) and after < before - 0.1, (before, after)


# ---- weight averaging (training/average.py) ------------------------------------------------

def test_average_refuses_a_source_it_cannot_use(tmp_path):
    """A missing file, a file that is not weights, and another network's weights each stop
    training.average with one line that names the source, before any work is done."""
    from training import average
    junk, other = tmp_path / "junk.pt", tmp_path / "linear.pt"
    junk.write_bytes(b"not a checkpoint")
    torch.save(nn.Linear(3, 2).state_dict(), other)
    for source, reason in ((tmp_path / "missing.pt", "not readable as weights"), (junk, "not readable as weights"),
                           (other, "not the ResNet9's parameters")):
        with pytest.raises(SystemExit) as exc:
            average.main([str(MODEL_DIR), str(source), "--threads", "1"])
        assert str(exc.value).startswith(f"refused: {source}: {reason}"), exc.value


def test_average_of_checkpoints_takes_its_normalisation_from_input_from(tmp_path, manifest, capsys):
    """train.py's epoch files carry no manifest: without a model directory the average
    refuses to guess the input normalisation; --input-from names the directory they were
    warm-started from, and the export carries that directory's normalisation, not its
    weights (here the shipped weights' own checkpoint: the same network comes back)."""
    from training import average
    epoch = tmp_path / "epoch-008.pt"
    torch.save(load_network(MODEL_DIR).net.state_dict(), epoch)
    with pytest.raises(SystemExit) as exc:
        average.main([str(epoch), "--threads", "1", "--data", str(require_data())])
    assert "--input-from" in str(exc.value)
    with pytest.raises(SystemExit) as exc:
        average.main([str(epoch), "--input-from", str(tmp_path), "--threads", "1"])
    assert str(exc.value).startswith(f"refused: --input-from {tmp_path}: no manifest.json"), exc.value

    # a small copy of the data (2,048 Training rows, 600 PublicTest faces): seconds, not the
    # minutes two passes over all of PublicTest take on a slow CPU
    train_x, train_y = fixed_sample(*load_split(require_data(), TRAINING), n=2048, seed=2)
    val_x, val_y = fixed_sample(*load_split(require_data(), PUBLIC_TEST), n=600, seed=4)
    data = tmp_path / "fer2013_small.npz"
    np.savez(data, images=np.concatenate([train_x, val_x]), labels=np.concatenate([train_y, val_y]),
             usage=np.repeat(np.array([TRAINING, PUBLIC_TEST], np.uint8), [len(train_y), len(val_y)]))
    out = tmp_path / "avg"
    capsys.readouterr()
    assert average.main([str(epoch), "--input-from", str(MODEL_DIR), "--out", str(out),
                         "--threads", "2", "--data", str(data)]) == 0
    exported = json.loads((out / "manifest.json").read_text())
    assert exported["input"] == manifest["input"]
    assert exported["training"]["input_from"] == str(MODEL_DIR)
    assert [s["path"] for s in exported["training"]["sources"]] == [str(epoch)]
    assert exported["metrics"]["n"] == len(val_y)
    spec = manifest["input"]
    shipped = metrics(val_y, predict_probs(load_network(MODEL_DIR).net, val_x, spec["mean"], spec["std"]).argmax(1))
    assert abs(exported["metrics"]["accuracy"] - shipped["accuracy"]) < 0.02, (exported["metrics"], shipped)
    # what it prints are the figures of the weights as exported, the manifest's
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    assert printed["fp16_as_exported"]["accuracy"] == exported["metrics"]["accuracy"]
    assert printed["fp16_as_exported"]["accuracy_flip"] == exported["metrics"]["accuracy_flip"]


def test_average_is_the_mean_and_batchnorm_is_recomputed(manifest, sample):
    images, labels, probs = sample
    spec = manifest["input"]
    shipped = load_network(MODEL_DIR).net.state_dict()
    torch.manual_seed(0)
    other = ResNet().state_dict()
    mean = average_states([shipped, other])
    key = "conv1.0.weight"
    assert torch.allclose(mean[key], (shipped[key] + other[key]) / 2)

    # the shipped parameters with BatchNorm statistics wiped: the network is lost ...
    net = ResNet()
    net.load_state_dict(average_states([shipped, shipped]))
    for layer in net.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
    net = net.to(memory_format=torch.channels_last)
    wiped = metrics(labels, predict_probs(net, images, spec["mean"], spec["std"]).argmax(1))["accuracy"]
    # ... until one pass over Training rows recomputes them
    train_x, train_y = fixed_sample(*load_split(require_data(), TRAINING), n=1024, seed=2)
    recompute_batchnorm(net, to_tensor(train_x, spec["mean"], spec["std"]), batch_size=256)
    restored = metrics(labels, predict_probs(net, images, spec["mean"], spec["std"]).argmax(1))["accuracy"]
    served = metrics(labels, probs.argmax(1))["accuracy"]
    assert wiped < served - 0.2, (wiped, served)
    assert restored > served - 0.03, (restored, served)
