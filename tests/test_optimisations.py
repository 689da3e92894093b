"""What makes the service fast (BENCHMARKS.md) must not change its answers: the folded
network against eager fp32, batching against one face at a time, the thread count, and
the two detection passes on real photos."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bench.photos import photos
from emotion.faces import FaceDetector
from emotion.model import ResNet, load_model, use_available_cpus
from training.common import DEFAULT_DATA, PUBLIC_TEST, ROOT, fixed_sample, load_split

MODEL_DIR = ROOT / "layers" / "model"


@pytest.fixture(scope="module")
def faces48() -> list[np.ndarray]:
    """200 real 48x48 faces: FER2013 PublicTest rows."""
    images, labels = load_split(DEFAULT_DATA, PUBLIC_TEST)
    return list(fixed_sample(images, labels, n=200, seed=1)[0])


@pytest.fixture(scope="module")
def models():
    return load_model(MODEL_DIR, fold=False), load_model(MODEL_DIR)


def test_folded_network_equals_eager_fp32_within_1e4(models, faces48):
    eager, folded = models
    assert any(isinstance(m, nn.BatchNorm2d) for m in eager.net.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.net.modules())
    assert isinstance(folded.net, ResNet) and not folded.net.training
    x = eager.preprocess(faces48)
    with torch.inference_mode():
        diff_logits = (folded.net(x) - eager.net(x)).abs().max().item()
    diff_probs = np.abs(folded.predict(faces48) - eager.predict(faces48)).max()
    assert diff_logits < 1e-4 and diff_probs < 1e-4, (diff_logits, diff_probs)


def test_unfolded_model_keeps_the_prototypes_state_dict(models):
    eager, folded = models
    assert list(eager.net.state_dict()) == list(ResNet().state_dict())  # trainable further (train --init)
    assert eager.sha256 == folded.sha256


def test_one_batch_equals_one_face_at_a_time(models, faces48):
    _, folded = models
    batched = folded.predict(faces48[:12])
    one_by_one = np.concatenate([folded.predict([f]) for f in faces48[:12]])
    assert np.abs(batched - one_by_one).max() < 1e-4
    assert (batched.argmax(1) == one_by_one.argmax(1)).all()


def test_threads_follow_the_cpus_the_process_may_use():
    n = use_available_cpus()
    assert n == len(os.sched_getaffinity(0)) == torch.get_num_threads()


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


def test_openmp_threads_sleep_when_idle():
    """handlers/runtime.py sets OMP_WAIT_POLICY=PASSIVE before torch is imported (its
    OpenMP reads it once, at load), unless the environment already says otherwise."""
    import subprocess
    import sys
    code = ("import sys, handlers.runtime, os; "
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "function"), str(ROOT)])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "PASSIVE"
    source = (ROOT / "function" / "handlers" / "runtime.py").read_text()
    assert source.index('"OMP_WAIT_POLICY"') < source.index("from emotion")
    done = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "ACTIVE"
