"""The int8 graph the service serves (training/quantize.py): made by the recipe its manifest
records, held to the gate on all of FER2013 PublicTest, chosen by the manifest or by
MODEL_PRECISION, and refused when it does not match its sha256.

Real: the shipped graphs, the real PublicTest faces and Training crops, onnxruntime as
the Lambda runs it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper

from emotion.model import PRECISIONS, WeightsError, load_model, softmax
from training import quantize
from training.common import DEFAULT_DATA, ROOT, TRAINING, load_split

MODEL_DIR = Path(os.environ.get("MODEL_UNDER_TEST") or ROOT / "layers" / "model")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((MODEL_DIR / "manifest.json").read_text())


def test_the_manifest_describes_the_int8_graph(manifest):
    entry = manifest["onnx_int8"]
    assert manifest["serves"] == "int8"
    assert entry["file"] == quantize.INT8_FILE != manifest["onnx"]["file"]
    assert entry["source_sha256"] == manifest["onnx"]["sha256"]  # made from the fp32 graph that ships
    assert {k: v for k, v in entry["recipe"].items() if k != "onnxruntime"} == quantize.RECIPE
    assert entry["recipe"]["onnxruntime"] == onnxruntime.__version__
    gate = entry["gate"]
    assert gate["passed"] and gate["failures"] == [] and gate["limits"] == quantize.GATE
    assert (gate["n"], gate["temperature"]) == (3589, manifest["calibration"]["temperature"])
    # quantised: int8 weights with one scale per output channel, uint8 activations
    graph = onnx.load(MODEL_DIR / entry["file"])
    weights = [numpy_helper.to_array(i) for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    convs = [w for w in weights if w.ndim == 4]
    assert len(convs) == 12 and all(np.abs(w).max() <= 64 for w in convs)  # 7 bits: reduce_range
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "Cast" not in ops
    per_channel = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"
                   and any(a.name == "axis" for a in n.attribute)]
    assert len(per_channel) >= 12
    assert (MODEL_DIR / entry["file"]).stat().st_size < 0.6 * (MODEL_DIR / manifest["onnx"]["file"]).stat().st_size


def test_the_gate_holds_on_publictest(manifest, publictest, publictest_logits):
    """int8 against fp32 on all 3,589 faces: at most 0.3 points less accurate, at least 98 %
    the same answers, a calibration error at most 0.01 higher (after the temperature)."""
    _, labels = publictest
    figures = quantize.gate(publictest_logits("fp32"), publictest_logits("int8"), labels,
                            manifest["calibration"]["temperature"])
    assert figures["passed"], figures
    assert figures["int8"]["accuracy"] >= figures["fp32"]["accuracy"] - 0.003
    assert figures["agreement"] >= 0.98
    assert figures["int8"]["ece"] <= figures["fp32"]["ece"] + 0.01
    # the manifest's figures are these (up to the kernels of another CPU)
    recorded = manifest["onnx_int8"]["gate"]
    assert figures["fp32"]["accuracy"] == pytest.approx(recorded["fp32"]["accuracy"], abs=1e-3)
    assert figures["int8"]["accuracy"] == pytest.approx(recorded["int8"]["accuracy"], abs=2e-3)
    assert figures["agreement"] == pytest.approx(recorded["agreement"], abs=3e-3)
    # and the fp32 figures are the shipped model's own, served as the manifest says
    served = "accuracy_flip" if manifest["flip_average"] else "accuracy"
    assert figures["fp32"]["accuracy"] == pytest.approx(manifest["metrics"][served], abs=1e-3)


def test_the_gate_refuses_what_it_should():
    rng = np.random.default_rng(0)
    fp32 = rng.normal(0, 2, (2000, 7)).astype(np.float32)
    # labels drawn from softmax(fp32): calibrated by construction
    labels = np.minimum((rng.random((2000, 1)) > softmax(fp32).cumsum(axis=1)).sum(axis=1), 6)
    assert quantize.gate(fp32, fp32, labels, 1.0)["passed"]
    # 3 % of the answers moved to another class: too few agree, and accuracy drops
    moved = fp32.copy()
    rows = rng.choice(2000, 60, replace=False)
    moved[rows] = np.roll(moved[rows], 1, axis=1)
    failed = quantize.gate(fp32, moved, labels, 1.0)
    assert not failed["passed"] and "fewer than 98 %" in " ".join(failed["failures"])
    # the same answers, but every confidence inflated: calibration error rises
    sharp = quantize.gate(fp32, fp32 * 3, labels, 1.0)
    assert not sharp["passed"] and sharp["failures"] == ["the calibration error rose by more than 0.01"]
    assert sharp["agreement"] == 1.0


def test_quantise_remakes_the_shipped_graph(manifest):
    """The recipe recorded in the manifest makes the graph that ships: the same int8 weights
    and the same scales (bit for bit on this machine's kernels; to 1e-5 on another's)."""
    images, _ = load_split(DEFAULT_DATA, TRAINING)
    remade = onnx.load_from_string(quantize.quantise(MODEL_DIR / manifest["onnx"]["file"],
                                                     quantize.calibration_crops(images), manifest["input"]))
    shipped = onnx.load(MODEL_DIR / manifest["onnx_int8"]["file"])
    a = {i.name: numpy_helper.to_array(i) for i in remade.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in shipped.graph.initializer}
    assert a.keys() == b.keys()
    for name in a:
        if a[name].dtype.kind == "f":
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, err_msg=name)
        else:
            assert np.abs(a[name].astype(int) - b[name].astype(int)).max(initial=0) <= 1, name
    assert [n.op_type for n in remade.graph.node] == [n.op_type for n in shipped.graph.node]


def test_calibration_crops_are_training_rows_only():
    images, _ = load_split(DEFAULT_DATA, TRAINING)
    crops = quantize.calibration_crops(images)
    assert crops.shape == (512, 48, 48)
    rows = np.sort(np.random.default_rng(0).choice(len(images), 512, replace=False))
    assert np.array_equal(crops, images[rows])


def test_quantize_writes_nothing_when_the_gate_fails(manifest, publictest_logits, monkeypatch, tmp_path, capsys):
    """The command itself: a graph that fails the gate is not written and the manifest is
    untouched (the quantisation and the forward passes are the cached ones, the limits
    tightened past what the shipped graph reaches)."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("manifest.json", manifest["weights"], manifest["onnx"]["file"]):
        shutil.copy(MODEL_DIR / name, model_dir / name)
    fp32_only = {k: v for k, v in manifest.items() if k not in ("onnx_int8", "serves")}
    (model_dir / "manifest.json").write_text(json.dumps(fp32_only, indent=2))
    shipped_int8 = (MODEL_DIR / manifest["onnx_int8"]["file"]).read_bytes()
    monkeypatch.setattr(quantize, "quantise", lambda *args: shipped_int8)
    monkeypatch.setattr(quantize, "logits_of", lambda model, images: publictest_logits(model.precision))
    monkeypatch.setattr(quantize, "GATE", {**quantize.GATE, "min_agreement": 0.999})
    before = (model_dir / "manifest.json").read_text()
    assert quantize.main(["--model-dir", str(model_dir)]) == 1
    assert "refused: the int8 graph fails the gate (fewer than 99.9 % of the answers agree with fp32)" \
        in capsys.readouterr().err
    assert not (model_dir / quantize.INT8_FILE).exists()
    assert (model_dir / "manifest.json").read_text() == before
    assert load_model(model_dir).precision == "fp32"  # without an int8 graph, fp32 serves
    with pytest.raises(WeightsError, match="no int8 graph.*training.quantize"):
        load_model(model_dir, precision="int8")

    # with the gate as it is, the same graph is written, and then served
    monkeypatch.setattr(quantize, "GATE", dict(manifest["onnx_int8"]["gate"]["limits"]))
    assert quantize.main(["--model-dir", str(model_dir)]) == 0
    written = json.loads((model_dir / "manifest.json").read_text())
    assert written["serves"] == "int8"
    assert written["onnx_int8"]["sha256"] == manifest["onnx_int8"]["sha256"]
    assert (model_dir / quantize.INT8_FILE).read_bytes() == shipped_int8
    assert load_model(model_dir).precision == "int8"


def test_precision_is_chosen_by_the_manifest_or_the_caller():
    for precision in PRECISIONS:
        model = load_model(MODEL_DIR, precision=precision)
        assert model.precision == precision
        probs = model.predict([np.full((48, 48), 120, np.uint8)])
        assert probs.shape == (1, 7) and abs(float(probs.sum()) - 1) < 1e-5
    assert load_model(MODEL_DIR).precision == "int8"
    assert load_model(MODEL_DIR, precision="FP32").precision == "fp32"
    with pytest.raises(WeightsError, match="must be one of int8, fp32, not 'fp16'"):
        load_model(MODEL_DIR, precision="fp16")


def test_int8_answers_follow_fp32_on_real_faces(publictest, publictest_logits, manifest):
    """Beyond the argmax: int8's calibrated probabilities stay close to fp32's."""
    t = np.float32(manifest["calibration"]["temperature"])
    fp32, int8 = softmax(publictest_logits("fp32") / t), softmax(publictest_logits("int8") / t)
    gap = np.abs(fp32 - int8).max(axis=1)
    assert np.median(gap) < 0.03 and np.quantile(gap, 0.99) < 0.25, (np.median(gap), np.quantile(gap, 0.99))
