"""What makes the service fast (BENCHMARKS.md) must not change its answers: the network as
served (the ONNX graph through OpenCV's DNN module, BatchNorm folded and Winograd
convolutions) against eager fp32 torch, batching against one face at a time, and the
thread count.  (Detection: tests/test_faces.py.)"""
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
    return load_network(MODEL_DIR), load_model(MODEL_DIR)


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


def test_one_batch_equals_one_face_at_a_time(models, faces48):
    _, served = models
    batched = served.predict(faces48[:12])
    one_by_one = np.concatenate([served.predict([f]) for f in faces48[:12]])
    assert np.abs(batched - one_by_one).max() < 1e-4
    assert (batched.argmax(1) == one_by_one.argmax(1)).all()


def test_threads_follow_the_cpus_the_process_may_use():
    n = use_available_cpus()
    assert n == len(os.sched_getaffinity(0)) == cv2.getNumThreads()
