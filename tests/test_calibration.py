"""Confidences that mean what they say: the manifest's temperature (training/calibrate.py),
applied by the service's ``predict``, and the expected calibration error it buys.

Real and fast: the shipped model's fp32 ONNX graph as the service runs it (onnxruntime),
on which the temperature is fitted, on a fixed sample of real FER2013 PublicTest faces
(the int8 graph is held to the same calibration by tests/test_precision.py).  PublicTest is where the temperature was
fitted, so these check that the shipped calibration is the one its weights need, not
how well it carries over to new faces.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from emotion.model import LoadedModel, WeightsError, load_model, softmax
from training.calibrate import (BINS, expected_calibration_error, fit_temperature, nll, threshold_table,
                               write_calibration)
from training.common import ROOT, fixed_sample

MODEL_DIR = Path(os.environ.get("MODEL_UNDER_TEST") or ROOT / "layers" / "model")

# 1,200 faces: with 15 bins, the ECE of a few hundred faces is inflated by sampling noise
# (of 40 random 600-face samples, 11 scored 0.05 or more; of 40 of 1,200, none).
SAMPLE_N, SAMPLE_SEED = 1200, 0


# ---- the measure itself ----------------------------------------------------------------------

def test_ece_is_zero_when_confidence_equals_accuracy():
    # 10 faces at 0.7 of which 7 are right, 20 at 0.9 of which 18 are right
    probs = np.array([[0.7, 0.3]] * 10 + [[0.1, 0.9]] * 20)
    labels = np.array([0] * 7 + [1] * 3 + [1] * 18 + [0] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_by_hand():
    # 5 bins of width 0.2; top confidences 0.95 (right), 0.75 (wrong), 0.65 (right), 0.55 (right):
    # (0.8, 1]: 1 face, accuracy 1, confidence 0.95 -> gap 0.05, weight 1/4
    # (0.6, 0.8]: 2 faces, accuracy 0.5, confidence 0.7 -> gap 0.2, weight 2/4
    # (0.4, 0.6]: 1 face, accuracy 1, confidence 0.55 -> gap 0.45, weight 1/4
    probs = np.array([[0.95, 0.05], [0.75, 0.25], [0.35, 0.65], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(0.05 / 4 + 0.2 / 2 + 0.45 / 4)
    # one face at 0.5, wrong: the whole gap
    assert expected_calibration_error(np.array([[0.5, 0.3, 0.2]]), np.array([1])) == pytest.approx(0.5)


def test_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20000, 7))
    true_t = 1.7
    cumulative = softmax(logits / true_t).cumsum(axis=1)
    # labels drawn from softmax(logits / 1.7)
    labels = np.minimum((rng.random((len(logits), 1)) > cumulative).sum(axis=1), 6)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.03)
    assert nll(logits, labels, t) < min(nll(logits, labels, 1.0), nll(logits, labels, 1.5 * t))


# ---- the shipped calibration -----------------------------------------------------------------

@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((MODEL_DIR / "manifest.json").read_text())


@pytest.fixture(scope="module")
def served() -> LoadedModel:
    return load_model(MODEL_DIR, precision="fp32")


@pytest.fixture(scope="module")
def sample(publictest, publictest_logits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed sample of PublicTest: its faces, labels and served fp32 logits (the rows
    of fixed_sample(n=SAMPLE_N, seed=SAMPLE_SEED))."""
    images, labels = publictest
    rows = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(labels), SAMPLE_N, replace=False))
    sample_images, sample_labels = fixed_sample(images, labels, n=SAMPLE_N, seed=SAMPLE_SEED)
    assert np.array_equal(sample_images, images[rows]) and np.array_equal(sample_labels, labels[rows])
    return sample_images, sample_labels, publictest_logits("fp32")[rows]


def test_manifest_records_the_calibration(manifest, served):
    cal = manifest.get("calibration")
    assert cal is not None, "manifest has no calibration: run python -m training.calibrate"
    assert (cal["fitted_on"], cal["n"], cal["bins"]) == ("FER2013 PublicTest", 3589, BINS)
    # trained with label smoothing, the network is under-confident: T < 1 sharpens its softmax
    assert 0.3 < cal["temperature"] < 0.8, cal
    assert served.temperature == cal["temperature"]
    assert cal["ece_after"] <= 0.04 < 0.1 < cal["ece_before"], cal
    assert cal["nll_after"] < cal["nll_before"], cal


def test_predict_applies_the_temperature(manifest, served, sample):
    images, _, logits = sample
    t = manifest["calibration"]["temperature"]
    probs = served.predict(list(images[:64]))
    np.testing.assert_allclose(probs, softmax(logits[:64] / t), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == logits[:64].argmax(axis=1)).all()
    # applied: the confidences differ from the plain softmax's, and are higher (T < 1)
    plain = softmax(logits[:64])
    assert np.abs(probs - plain).max() > 0.05
    assert (probs.max(axis=1) >= plain.max(axis=1) - 1e-6).all()


def test_without_calibration_the_temperature_is_one(served, sample):
    images, _, logits = sample
    bare = dataclasses.replace(served, manifest={k: v for k, v in served.manifest.items() if k != "calibration"})
    assert bare.temperature == 1.0
    np.testing.assert_allclose(bare.predict(list(images[:16])), softmax(logits[:16]), atol=1e-6)


def test_calibrated_on_a_fixed_publictest_sample(manifest, served, sample):
    _, labels, logits = sample
    t = served.temperature
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits / np.float32(t)), labels)
    assert after < 0.05 < 0.1 < before, (before, after)
    # the shipped temperature is the one these weights need: the sample alone fits about the same
    assert fit_temperature(logits, labels) == pytest.approx(t, rel=0.05)


def test_default_threshold_sends_the_unsure_faces(served, sample):
    """FALLBACK_MODE=low-confidence at the default threshold: about a quarter of the faces
    go to Rekognition, ones the local model gets wrong more often than not."""
    from emotion.config import Settings

    _, labels, logits = sample
    probs = softmax(logits / np.float32(served.temperature))
    (row,) = threshold_table(probs, labels, thresholds=[Settings.confidence_threshold])
    assert 0.15 < row["sent"] < 0.35, row
    assert row["accuracy_below"] < 0.5 < 0.7 < row["accuracy_above"], row


def test_write_calibration_sets_both_keys_once_and_refuses_other_weights(manifest, tmp_path):
    """The command's write: flip_average and calibration land together, every other key
    stays; a manifest whose weights changed meanwhile is refused and left as it was."""
    (tmp_path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    cal = {**manifest["calibration"], "temperature": 0.61}
    written = write_calibration(tmp_path, cal, manifest["sha256"], flip=True)
    assert json.loads((tmp_path / "manifest.json").read_text()) == written
    assert (written["flip_average"], written["calibration"]["temperature"]) == (True, 0.61)
    assert {k: v for k, v in written.items() if k not in ("flip_average", "calibration")} == \
        {k: v for k, v in manifest.items() if k not in ("flip_average", "calibration")}
    before = (tmp_path / "manifest.json").read_text()
    with pytest.raises(WeightsError, match="changed while its flip_average, calibration was computed"):
        write_calibration(tmp_path, manifest["calibration"], "0" * 64, flip=False)
    assert (tmp_path / "manifest.json").read_text() == before
