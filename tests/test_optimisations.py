"""What makes the service fast (BENCHMARKS.md) must not change its answers: the fp32 ONNX
graph as onnxruntime runs it (BatchNorm folded, its graph optimisations) against eager
fp32 torch, batching against one face at a time in both precisions, and the thread
count.  (The int8 graph's gate: tests/test_precision.py; detection: tests/test_faces.py.)"""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from emotion.model import load_model, softmax, use_available_cpus
from training.common import DEFAULT_DATA, PUBLIC_TEST, ROOT, fixed_sample, load_split
from training.network import load_network

MODEL_DIR = ROOT / "layers" / "model"


@pytest.fixture(scope="module")
def faces48() -> list[np.ndarray]:
    """200 real 48x48 faces: FER2013 PublicTest rows."""
    images, labels = load_split(DEFAULT_DATA, PUBLIC_TEST)
    return list(fixed_sample(images, labels, n=200, seed=1)[0])


@pytest.fixture(scope="module")
def models():
    return load_network(MODEL_DIR), load_model(MODEL_DIR, precision="fp32", flip=False)


@pytest.mark.parametrize("batch", [1, 3, 200])
def test_served_network_equals_eager_fp32_within_1e4(models, faces48, batch):
    eager, served = models
    assert not eager.net.training and eager.net.conv1[0].weight.dtype == torch.float32
    faces = faces48[:batch]
    with torch.inference_mode():
        expected = eager.net(eager.preprocess(faces))
    logits = served.logits(faces)
    diff_logits = np.abs(logits - expected.numpy()).max()
    diff_probs = np.abs(softmax(logits) - torch.softmax(expected, dim=1).numpy()).max()
    assert diff_logits < 1e-4 and diff_probs < 1e-4, (diff_logits, diff_probs)
    # predict: the same logits, divided by the manifest's temperature (tests/test_calibration.py)
    calibrated = softmax(served.logits(faces[:3]) / np.float32(served.temperature))
    assert np.array_equal(served.predict(faces[:3]), calibrated)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_flip_averaging_answers_a_face_and_its_mirror_image_alike(models, faces48, precision):
    """With flip averaging (MODEL_FLIP_AVERAGE=true), each face's logits are the mean of its
    and its mirror image's (the eager network's, for fp32), so a face and its mirror image
    get the same answer; in one pass they do not always."""
    eager, _ = models
    faces, mirrored = faces48[:40], [np.ascontiguousarray(f[:, ::-1]) for f in faces48[:40]]
    served = load_model(MODEL_DIR, precision=precision, flip=True)
    assert served.flip
    np.testing.assert_allclose(served.predict(faces), served.predict(mirrored), atol=1e-5)
    if precision == "fp32":
        with torch.inference_mode():
            x = eager.preprocess(faces)
            expected = (eager.net(x) + eager.net(torch.flip(x, dims=[3]))) / 2
        assert np.abs(served.logits(faces) - expected.numpy()).max() < 1e-4
    one_pass = load_model(MODEL_DIR, precision=precision, flip=False)
    assert np.abs(one_pass.predict(faces) - one_pass.predict(mirrored)).max() > 0.05


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_one_batch_equals_one_face_at_a_time(faces48, precision):
    served = load_model(MODEL_DIR, precision=precision)
    batched = served.predict(faces48[:12])
    one_by_one = np.concatenate([served.predict([f]) for f in faces48[:12]])
    assert np.abs(batched - one_by_one).max() < 1e-4
    assert (batched.argmax(1) == one_by_one.argmax(1)).all()


def test_threads_follow_the_cpus_the_process_may_use(monkeypatch):
    n = use_available_cpus()
    assert n == len(os.sched_getaffinity(0)) == cv2.getNumThreads()
    # the classifier's session: one operator thread per CPU the process may use
    served = load_model(MODEL_DIR)
    assert served.session.get_session_options().intra_op_num_threads == n
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # as in a container given one CPU
    one = load_model(MODEL_DIR)
    assert one.session.get_session_options().intra_op_num_threads == 1
    faces = [np.full((48, 48), 128, np.uint8), np.eye(48, dtype=np.uint8) * 255]
    np.testing.assert_allclose(one.predict(faces), served.predict(faces), atol=1e-5)
