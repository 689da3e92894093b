"""What makes the service fast (BENCHMARKS.md) must not change its answers: the network as
served (the ONNX graph through OpenCV's DNN module, BatchNorm folded and Winograd
convolutions) against eager fp32 torch, batching against one face at a time, the thread
count, and the two detection passes on real photos."""
from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from bench.photos import photos
from emotion.faces import FaceDetector
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
    assert np.array_equal(served.predict(faces[:3]), softmax(served.logits(faces[:3])))


def test_one_batch_equals_one_face_at_a_time(models, faces48):
    _, served = models
    batched = served.predict(faces48[:12])
    one_by_one = np.concatenate([served.predict([f]) for f in faces48[:12]])
    assert np.abs(batched - one_by_one).max() < 1e-4
    assert (batched.argmax(1) == one_by_one.argmax(1)).all()


def test_threads_follow_the_cpus_the_process_may_use():
    n = use_available_cpus()
    assert n == len(os.sched_getaffinity(0)) == cv2.getNumThreads()


def _grey(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def _iou(a, b) -> float:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.width, b.x + b.width), min(a.y + a.height, b.y + b.height)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / (a.width * a.height + b.width * b.height - inter)


@pytest.mark.parametrize("name", ["640x480", "1920x1080"])
def test_fast_pass_finds_a_face_that_fills_the_photo(name):
    grey = _grey(photos()[name]["data"])
    two_pass = FaceDetector()
    full_only = FaceDetector(fast_side=0)
    assert len(two_pass.passes) == 2 and len(full_only.passes) == 1
    fast = two_pass.detect_at(grey, *two_pass.passes[0])
    assert len(fast) == 1  # found by the fast pass: the full pass never runs
    assert two_pass.detect(grey) == fast
    full = full_only.detect(grey)
    # the same face as the full pass finds, whose box may differ by the coarser scale step
    assert _iou(fast[0], full[0]) > 0.7, (fast, full)
    assert fast[0].width > grey.shape[0] * 0.15


def test_small_faces_fall_through_to_the_full_pass(group_jpeg):
    grey = _grey(group_jpeg)  # three faces of 58-74 px in 1280x720: under the fast pass's 7.5 %
    detector = FaceDetector()
    assert detector.detect_at(grey, *detector.passes[0]) == []
    boxes = detector.detect(grey)
    assert len(boxes) == 3
    assert boxes == FaceDetector(fast_side=0).detect(grey)


def test_no_face_is_no_face_in_either_pass(coffee_jpeg):
    assert FaceDetector().detect(_grey(coffee_jpeg)) == []


def test_the_fast_pass_can_be_turned_off(monkeypatch):
    from emotion.config import Settings
    monkeypatch.setenv("DETECT_FAST_SIDE", "0")
    assert Settings.from_env().detect_fast_side == 0
    monkeypatch.setenv("DETECT_FAST_SIDE", "256")
    monkeypatch.setenv("DETECT_FAST_SCALE_FACTOR", "1.3")
    s = Settings.from_env()
    assert (s.detect_fast_side, s.detect_fast_scale_factor) == (256, 1.3)
