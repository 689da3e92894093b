"""Training's CPU path (issue 20): FER+ soft labels from the real votes, a training step on
them, distillation from the shipped network, and a run that is stopped and resumed
continuing the same schedule.

Real: the FER2013 rows and FER+ votes in ../shared, the real network and training loop
(on a few rows, so that it runs in seconds)."""
from __future__ import annotations

import io
import json
import os
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training import train as train_module
from training.common import DEFAULT_DATA, PUBLIC_TEST, ROOT, TRAINING, fixed_sample, load_split, to_tensor
from training.ferplus import (DEFAULT_VOTES, FER2013_FROM_FERPLUS, FERPLUS_COLUMNS, load_split_index, load_votes,
                              soft_targets)
from training.network import ResNet
from emotion.model import CLASSES


@pytest.fixture(scope="module")
def training_rows():
    for path in (DEFAULT_DATA, DEFAULT_VOTES):
        if not path.exists():
            pytest.fail(f"{path} not found (../shared/data/fer2013 beside the repository)")
    images, labels = load_split(DEFAULT_DATA, TRAINING)
    index = load_split_index(DEFAULT_DATA, TRAINING)
    return images, labels, index, load_votes(DEFAULT_VOTES, index)


def test_the_columns_map_to_our_classes():
    mapped = [FERPLUS_COLUMNS[c] for c in FER2013_FROM_FERPLUS]
    assert mapped == ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    assert [c.lower() for c in CLASSES] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def test_soft_targets_sum_to_one_and_follow_the_votes(training_rows):
    _, labels, index, votes = training_rows
    assert votes.shape == (len(labels), 10) == (28709, 10)
    targets = soft_targets(votes, labels, index, weight=1.0)  # the crowd alone
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert (targets >= 0).all()
    # where the crowd voted for our emotions, the target is their share of those votes
    row = int(np.flatnonzero((votes[:, 7:].sum(axis=1) == 0) & (votes[:, :7].max(axis=1) < votes[:, :7].sum(axis=1)))[0])
    emotions = votes[row, list(FER2013_FROM_FERPLUS)].astype(np.float32)
    np.testing.assert_allclose(targets[row], emotions / emotions.sum(), atol=1e-6)
    # contempt, unknown and not-a-face votes are dropped, not counted
    mixed = int(np.flatnonzero((votes[:, 7:9].sum(axis=1) > 0) & (votes[:, :7].sum(axis=1) > 0))[0])
    emotions = votes[mixed, list(FER2013_FROM_FERPLUS)].astype(np.float32)
    np.testing.assert_allclose(targets[mixed], emotions / emotions.sum(), atol=1e-6)
    # rows with no emotion vote left (all not-a-face) keep FER2013's label
    no_vote = np.flatnonzero(votes[:, :7].sum(axis=1) == 0)
    assert len(no_vote) >= 100
    assert (targets[no_vote].argmax(1) == labels[no_vote]).all() and (targets[no_vote].max(1) == 1).all()
    # the mapping is right: the crowd's majority is FER2013's label on most rows (a
    # shuffled mapping would agree on few)
    agree = (targets.argmax(1) == labels).mean()
    assert agree > 0.6, agree


def test_the_mix_keeps_fer2013s_label(training_rows):
    _, labels, index, votes = training_rows
    half = soft_targets(votes, labels, index, weight=0.5)
    crowd = soft_targets(votes, labels, index, weight=1.0)
    onehot = np.eye(7, dtype=np.float32)[labels]
    np.testing.assert_allclose(half, 0.5 * crowd + 0.5 * onehot, atol=1e-6)
    np.testing.assert_allclose(half.sum(axis=1), 1.0, atol=1e-6)
    assert (half[np.arange(len(labels)), labels] >= 0.5).all()
    # the row whose votes describe another image keeps its own label only
    [row] = np.flatnonzero(index == 5274)
    assert half[row].argmax() == labels[row] and half[row].max() == 1.0
    with pytest.raises(ValueError):
        soft_targets(votes, labels, index, weight=1.5)


def loss_without_dropout(model: ResNet, x: torch.Tensor, loss) -> float:
    """``loss(logits)`` of the batch with batch statistics as in training but no dropout,
    so that two measures of the same weights agree."""
    model.train()
    for layer in (model.drop1, model.drop2, model.drop3):
        layer.eval()
    with torch.no_grad():
        return float(loss(model(x.contiguous(memory_format=torch.channels_last))))


def test_a_step_on_soft_targets_lowers_their_loss(training_rows):
    images, labels, index, votes = training_rows
    rows = np.sort(np.random.default_rng(3).choice(len(labels), 16, replace=False))
    x = to_tensor(images[rows], images.mean() / 255.0, images.std() / 255.0)
    y = torch.from_numpy(labels[rows])
    target = torch.from_numpy(soft_targets(votes[rows], labels[rows], index[rows]))
    torch.manual_seed(0)
    model = ResNet().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4)

    def soft_loss() -> float:
        return loss_without_dropout(model, x, lambda logits: -(target * torch.log_softmax(logits, 1)).sum(1).mean())

    before = soft_loss()
    for _ in range(4):
        loss, _ = train_module.train_step(model, optimizer, x, y, 0.1, bf16=False, target=target)
        assert torch.isfinite(loss)
    assert soft_loss() < before - 0.1, (before, soft_loss())


def test_label_targets_are_cross_entropys_label_smoothing(training_rows):
    """Mixing needs the labels as distributions: against them, the soft cross-entropy is
    the one F.cross_entropy computes with label smoothing."""
    _, labels, _, _ = training_rows
    y = torch.from_numpy(labels[:64])
    logits = torch.randn(64, 7, generator=torch.Generator().manual_seed(0))
    for smoothing in (0.0, 0.1):
        target = train_module.label_targets(y, smoothing)
        torch.testing.assert_close(target.sum(1), torch.ones(64))
        soft = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
        torch.testing.assert_close(soft, torch.nn.functional.cross_entropy(logits, y.long(), label_smoothing=smoothing))


def mixed_batch(training_rows, seed: int, mixup: float, cutmix: float):
    images, labels, _, _ = training_rows
    rows = np.sort(np.random.default_rng(7).choice(len(labels), 16, replace=False))
    x = to_tensor(images[rows], 0.5, 0.25)
    y = torch.from_numpy(labels[rows])
    target = train_module.label_targets(y, 0.0)
    mixed, mixed_target = train_module.mix(x, target, torch.Generator().manual_seed(seed), mixup, cutmix)
    return x, y, target, mixed, mixed_target


def partner(x: torch.Tensor, candidate: torch.Tensor) -> int:
    """The row of x that candidate is closest to."""
    return int((x - candidate).flatten(1).abs().sum(1).argmin())


def test_mixup_blends_two_real_faces_and_their_labels_alike(training_rows):
    blended = 0
    for seed in range(4):  # one weight per batch, from Beta(0.4, 0.4): often near 0 or 1
        x, y, target, mixed, mixed_target = mixed_batch(training_rows, seed=seed, mixup=0.4, cutmix=0.0)
        torch.testing.assert_close(mixed_target.sum(1), torch.ones(16))
        for i in range(16):
            lam = float(mixed_target[i, y[i]])  # the share of row i's own label
            if lam >= 1 - 1e-6 or lam < 0.1:
                continue  # paired with a face of its own label, or nearly all the other one
            other = (mixed[i] - lam * x[i]) / (1 - lam)  # must be the partner's image
            j = partner(x, other)
            torch.testing.assert_close(other, x[j], atol=1e-3, rtol=0)
            torch.testing.assert_close(mixed_target[i], lam * target[i] + (1 - lam) * target[j])
            blended += 1
    assert blended >= 8, blended
    # drawn from the generator: the same seed mixes the same way, another otherwise
    again = train_module.mix(x, target, torch.Generator().manual_seed(3), 0.4, 0.0)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], mixed_target)
    assert not torch.equal(train_module.mix(x, target, torch.Generator().manual_seed(4), 0.4, 0.0)[0], mixed)


def test_cutmix_pastes_one_box_and_weights_the_labels_by_its_area(training_rows):
    x, y, target, mixed, mixed_target = mixed_batch(training_rows, seed=3, mixup=0.0, cutmix=1.0)
    changed = (mixed != x).squeeze(1)  # (16, 48, 48)
    assert changed.any()
    rows, cols = changed.any(0).nonzero()[:, 0], changed.any(0).nonzero()[:, 1]
    top, bottom, left, right = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    kept = 1 - (bottom - top) * (right - left) / 48 ** 2  # one box, the same for the whole batch
    for i in range(16):
        box = mixed[i, :, top:bottom, left:right]
        j = partner(x[:, :, top:bottom, left:right], box)
        assert torch.equal(box, x[j, :, top:bottom, left:right])  # pasted from one face of the batch
        outside = mixed[i].clone()
        outside[:, top:bottom, left:right] = x[i, :, top:bottom, left:right]
        assert torch.equal(outside, x[i])  # the rest is untouched
        if not torch.equal(target[i], target[j]):
            torch.testing.assert_close(mixed_target[i], kept * target[i] + (1 - kept) * target[j])
    # with both on, each batch draws one: over a few seeds both kinds appear
    kinds = set()
    for seed in range(8):
        out, _ = train_module.mix(x, target, torch.Generator().manual_seed(seed), 0.4, 1.0)
        changed = (out != x).flatten(1).float().mean(1)  # per face: mixup changes (nearly) every pixel
        kinds.add("cutmix" if float(changed.max()) < 0.95 else "mixup")
    assert kinds == {"mixup", "cutmix"}, kinds


SHIPPED = ROOT / "layers" / "model"


def test_the_teachers_see_each_their_own_normalisation():
    """The student's batch may be normalised otherwise than a teacher's own input: the
    teachers' probabilities do not depend on it, and they are the shipped network's
    answers (flip-averaged), right on real PublicTest faces about as often as its manifest says."""
    images, labels = fixed_sample(*load_split(DEFAULT_DATA, PUBLIC_TEST), n=120)
    probs = []
    for mean, std in ((0.5, 0.25), (0.0, 1.0)):
        teachers = train_module.Teachers([SHIPPED], mean, std, "cpu", bf16=False)
        probs.append(teachers.probabilities(to_tensor(images, mean, std), temperature=1.0))
    torch.testing.assert_close(probs[0], probs[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(probs[0].sum(1), torch.ones(120), atol=1e-5, rtol=0)
    accuracy = float((probs[0].argmax(1).numpy() == labels).mean())
    assert accuracy > 0.6, accuracy
    # a higher temperature softens the target without changing its ranking
    soft = teachers.probabilities(to_tensor(images, 0.0, 1.0), temperature=4.0)
    assert float(soft.max(1).values.mean()) < float(probs[1].max(1).values.mean())


def test_distillation_loss_drops_in_a_few_steps(training_rows):
    """A new network trained on 32 real Training faces against the shipped network's
    softened answers comes closer to them in a few steps."""
    images, labels, _, _ = training_rows
    rows = np.sort(np.random.default_rng(5).choice(len(labels), 32, replace=False))
    mean, std = images.mean() / 255.0, images.std() / 255.0
    x, y = to_tensor(images[rows], mean, std), torch.from_numpy(labels[rows])
    teacher = train_module.Teachers([SHIPPED], mean, std, "cpu", bf16=False).probabilities(x, temperature=2.0)
    torch.manual_seed(0)
    model = ResNet().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4)

    def distillation_loss() -> float:
        return loss_without_dropout(model, x, lambda logits: train_module.distillation_loss(logits, teacher, 2.0))

    before = distillation_loss()
    for _ in range(5):
        loss, _ = train_module.train_step(model, optimizer, x, y, 0.1, bf16=False, teacher=teacher,
                                          distil_weight=1.0, distil_temperature=2.0)
        assert torch.isfinite(loss)
    after = distillation_loss()
    assert after < 0.8 * before, (before, after)


def test_bf16_autocast_is_on_by_default_only_where_it_is_native(monkeypatch):
    # emulated bf16 made a CPU without AVX-512 BF16 train >6x slower than fp32 (training/runs/cpu/README.md)
    assert train_module.native_bf16("cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    for native in (False, True):
        monkeypatch.setattr(train_module, "native_bf16", lambda device, native=native: native)
        assert train_module.parse_args(["--device", "cpu"]).bf16 is native
        assert train_module.parse_args(["--device", "cpu", "--bf16"]).bf16 is True
        assert train_module.parse_args(["--device", "cpu", "--no-bf16"]).bf16 is False


def test_the_moving_average_is_the_librarys(training_rows):
    """train.update_average (no host reads of the update count) keeps the same moving
    average of the weights and BatchNorm statistics as torch's own
    AveragedModel.update_parameters, from the first update (a copy) on."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    images, labels, _, _ = training_rows
    rows = np.sort(np.random.default_rng(7).choice(len(labels), 16, replace=False))
    x, y = to_tensor(images[rows], images.mean() / 255.0, images.std() / 255.0), torch.from_numpy(labels[rows])
    torch.manual_seed(0)
    model = ResNet().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ours, theirs = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True) for _ in range(2))
    for step in range(3):
        train_module.train_step(model, optimizer, x, y, 0.1, bf16=False)
        train_module.update_average(ours, model, first=step == 0)
        theirs.update_parameters(model)
    mine, reference, now = ours.state_dict(), theirs.state_dict(), model.state_dict()
    assert mine.keys() == reference.keys()
    assert all(torch.equal(mine[k], reference[k]) for k in mine), [k for k in mine if not torch.equal(mine[k], reference[k])]
    assert int(mine["n_averaged"]) == 3
    # an average, not a copy of the weights it follows
    assert any(not torch.equal(mine["module." + k], v) for k, v in now.items() if v.is_floating_point())


class Stop(Exception):
    pass


def run(tmp: Path, *extra: str) -> list[str]:
    args = ["--limit", "40", "--batch-size", "16", "--epochs", "2", "--save-every", "1", "--no-export",
            "--no-bf16", "--threads", "2", "--seed", "3", "--lr", "1e-3", "--checkpoint-dir", str(tmp),
            "--soft-labels", str(DEFAULT_VOTES), "--keep-epochs", "2", "--teacher", str(SHIPPED),
            "--mixup", "0.4", "--cutmix", "1.0", "--ema", "0.9", *extra]
    return args


def test_a_resumed_run_continues_the_same_schedule(tmp_path, monkeypatch):
    """Stopped after its fourth step (the second epoch's first), a run resumed from its
    checkpoint sees the same batches with the same augmentation and mixing, at the same
    learning rates, against the same targets (FER+ votes, mixed, and a teacher), and ends
    with the same weights and the same moving average of them as a run that was never
    stopped; the average is what is kept."""
    seen = {"whole": [], "stopped": []}
    original = train_module.train_step

    def recording(key, stop_after=None):
        def step(model, optimizer, x, y, *rest, **kw):
            if stop_after is not None and len(seen[key]) == stop_after:
                raise Stop
            seen[key].append((float(x.sum()), y.tolist(), optimizer.param_groups[0]["lr"],
                              rest[2].tolist(), float(rest[3].sum())))  # rest: smoothing, bf16, target, teacher
            return original(model, optimizer, x, y, *rest, **kw)
        return step

    monkeypatch.setattr(train_module, "train_step", recording("whole"))
    assert train_module.main(run(tmp_path / "whole")) == 0
    monkeypatch.setattr(train_module, "train_step", recording("stopped", stop_after=4))
    with pytest.raises(Stop):
        train_module.main(run(tmp_path / "stopped"))
    monkeypatch.setattr(train_module, "train_step", recording("stopped"))
    assert train_module.main(run(tmp_path / "stopped", "--resume")) == 0

    assert len(seen["whole"]) == 6  # 3 steps of 16, 16 and 8 rows, two epochs
    assert seen["stopped"] == seen["whole"]  # data order, augmentation, learning rate
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    stopped = torch.load(tmp_path / "stopped" / "last.pt", weights_only=False)
    assert whole["state"]["epoch"] == stopped["state"]["epoch"] == 2
    assert whole["scheduler"]["last_epoch"] == stopped["scheduler"]["last_epoch"] == 6
    for part in ("model", "ema"):
        for key, value in whole[part].items():
            assert torch.allclose(value.float(), stopped[part][key].float(), atol=1e-6), (part, key)
    # the per-epoch log (the average's figures and the raw weights' beside them) and the
    # weights kept for averaging: the moving average's, not the raw weights
    log = [json.loads(line) for line in (tmp_path / "stopped" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(0 <= r["raw_val_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1 for r in log)
    assert sorted(p.name for p in (tmp_path / "stopped").glob("epoch-*.pt")) == ["epoch-001.pt", "epoch-002.pt"]
    kept = torch.load(tmp_path / "stopped" / "epoch-002.pt", weights_only=False)
    averaged = {k.removeprefix("module."): v for k, v in stopped["ema"].items() if k.startswith("module.")}
    assert kept.keys() == averaged.keys()
    assert all(torch.equal(kept[k], averaged[k]) for k in kept)
    assert any(not torch.equal(kept[k], stopped["model"][k]) for k in kept)
    # another schedule cannot resume this checkpoint
    with pytest.raises(SystemExit, match="other settings"):
        train_module.main(run(tmp_path / "stopped", "--resume", "--soft-weight", "0.7"))
    with pytest.raises(SystemExit, match="other settings"):
        train_module.main(run(tmp_path / "stopped", "--resume", "--distil-weight", "0.5"))
    with pytest.raises(SystemExit, match="other settings"):
        train_module.main(run(tmp_path / "stopped", "--resume", "--ema", "0.5"))


def test_a_run_exports_its_best_once_at_its_end_or_when_stopped(tmp_path, monkeypatch):
    """The best weights are kept at each improving epoch and exported once, when the run
    ends: at the schedule's end, or on SIGTERM (a device call's time limit), which stops it
    mid-epoch with its best so far exported and its checkpoint resumable."""
    exports = []
    real_export = train_module.export_weights
    monkeypatch.setattr(train_module, "export_weights",
                        lambda net, out, extra: (exports.append(out), real_export(net, out, extra))[1])
    steps = []
    original = train_module.train_step

    def step(*a, **kw):
        steps.append(1)
        if len(steps) == 5:  # the second epoch's second step
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*a, **kw)

    def args(tmp):
        return [a for a in run(tmp) if a != "--no-export"] + ["--out", str(tmp / "model")]

    monkeypatch.setattr(train_module, "train_step", step)
    assert train_module.main(args(tmp_path / "stopped")) == 130
    assert exports == [tmp_path / "stopped" / "model"] and len(steps) == 5
    manifest = json.loads((tmp_path / "stopped" / "model" / "manifest.json").read_text())
    assert manifest["training"]["best_epoch"] == 1 and 0 <= manifest["metrics"]["accuracy_flip"] <= 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler does not outlive the run
    assert train_module.main(args(tmp_path / "stopped") + ["--resume"]) == 0
    assert len(exports) == 2 and len(steps) == 7  # the rest of epoch 2 (5th step again), then the export
    whole = torch.load(tmp_path / "stopped" / "last.pt", weights_only=False)["state"]
    manifest = json.loads((tmp_path / "stopped" / "model" / "manifest.json").read_text())
    assert manifest["training"]["best_epoch"] == whole["best_epoch"]
    assert manifest["training"]["selected_by"]["accuracy_flip_fp32"] == whole["best"]


def test_a_probe_times_the_runs_own_steps_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """--probe runs the schedule's first steps (its warm-up, then the timed ones, across
    an epoch's end) exactly as the run would, and one evaluation, prints their timings
    as one JSON line and leaves no checkpoint, log or weights behind."""
    seen = {"run": [], "probe": []}
    original = train_module.train_step

    def recording(key):
        def step(model, optimizer, x, y, *rest, **kw):
            seen[key].append((float(x.sum()), y.tolist(), optimizer.param_groups[0]["lr"]))
            return original(model, optimizer, x, y, *rest, **kw)
        return step

    monkeypatch.setattr(train_module, "train_step", recording("run"))
    assert train_module.main(run(tmp_path / "run")) == 0
    capsys.readouterr()
    monkeypatch.setattr(train_module, "train_step", recording("probe"))
    assert train_module.main(run(tmp_path / "probe", "--probe", "2")) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["probe"]

    assert len(seen["probe"]) == train_module.PROBE_WARMUP + 2 == 5
    assert seen["probe"] == seen["run"][:5]  # the run's own batches and learning rates
    assert figures["steps"] == 2 and figures["steps_per_epoch"] == 3 and figures["device"] == "cpu"
    assert figures["seconds_per_step"] > 0 and figures["evaluation_seconds"] > 0 and figures["writing_seconds"] > 0
    assert figures["export_seconds"] == 0  # --no-export: no export at the run's end either
    assert figures["eval_last"] == 0  # every epoch evaluated (--eval-last: training/device/gather.fit_epochs)
    assert figures["seconds_per_epoch"] == pytest.approx(
        3 * figures["seconds_per_step"] + figures["evaluation_seconds"] + figures["writing_seconds"], abs=1e-2)
    assert not (tmp_path / "probe").exists()

    # training/device/sweep.sh turns these figures into the epochs that fit the time left
    from training.device import gather
    figures = {**figures, "export_seconds": 3.0}  # a run that exports, once, at its end
    (tmp_path / "probe_P.log").write_text("exported weights to /tmp/x\n" + json.dumps({"probe": figures}) + "\n")
    timed = (figures["warmup_seconds"] + 2 * figures["seconds_per_step"] + figures["evaluation_seconds"]
             + figures["writing_seconds"] + figures["export_seconds"])
    startup = 4.0  # the probe's wall time less what it timed: imports, data, model
    (tmp_path / "probe_P.seconds").write_text(f"{timed + startup:.3f}\n")
    left = startup + figures["export_seconds"] + 7.5 * figures["seconds_per_epoch"]
    assert gather.epochs(tmp_path, left, 0.0, 300, ["P", "absent"]) == ["P 7", "absent -"]
    assert gather.epochs(tmp_path, left, 0.0, 5, ["P"]) == ["P 5"]
    assert gather.epochs(tmp_path, startup, 0.0, 300, ["P"]) == ["P 1"]  # one epoch at least

    # and what comes back says what the fit was made from beside what the run took
    (tmp_path / "meta_P").write_text("0 4 1000\n")
    (tmp_path / "rc_P").write_text("0\n")
    (tmp_path / "end_P").write_text("1234\n")
    assert gather.collect(tmp_path, tmp_path / "out", 3, ["P"]) == 0
    with tarfile.open(fileobj=io.BytesIO(b"".join(f.read_bytes() for f in sorted((tmp_path / "out").glob("results.tar.*"))))) as tar:
        back = json.load(tar.extractfile("P/run.json"))
    assert back["seconds"] == 234 and back["probe"]["seconds_per_step"] == figures["seconds_per_step"]
    assert back["probe"]["wall_seconds"] == pytest.approx(timed + startup, abs=1e-3)


def test_a_run_evaluates_only_its_last_epochs_with_eval_last(tmp_path, monkeypatch):
    """--eval-last 1 over two epochs: the first epoch logs its training figures only (no
    PublicTest pass, never kept as the best), the last is evaluated and kept; the device
    tools read such a log, and @EPOCHS fits more epochs when only the last N evaluate."""
    passes = []
    original = train_module.evaluate
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **kw: (passes.append(1), original(*a, **kw))[1])
    assert train_module.main(run(tmp_path, "--eval-last", "1")) == 0
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert "val_accuracy_flip" not in log[0] and 0 <= log[0]["train_accuracy"] <= 1
    assert 0 <= log[1]["val_accuracy_flip"] <= 1 and 0 <= log[1]["raw_val_accuracy_flip"] <= 1
    assert len(passes) == 2  # epoch 2 only: the moving average and the raw weights beside it
    assert torch.load(tmp_path / "last.pt", weights_only=False)["state"]["best_epoch"] == 2

    from training.device import gather
    assert gather.best_epoch(tmp_path / "log.jsonl")["epoch"] == 2
    (tmp_path.parent / "ck_R").mkdir()
    (tmp_path.parent / "ck_R" / "log.jsonl").write_text(json.dumps(log[0]) + "\n")
    assert gather.heartbeat(tmp_path.parent, ["R"]) == "R:e1"
    assert gather.best_epoch(tmp_path.parent / "ck_R" / "log.jsonl") is None
    # an evaluated epoch costs 10 s of steps + 6 s of evaluation and writing; no start-up
    figures = {"steps": 2, "seconds_per_step": 1.0, "steps_per_epoch": 10, "warmup_seconds": 0.0,
               "evaluation_seconds": 5.0, "writing_seconds": 1.0, "export_seconds": 0.0,
               "seconds_per_epoch": 16.0}
    assert gather.fit_epochs(figures, 8.0, 123.0, 0.0, 300) == 7  # every epoch evaluated
    assert gather.fit_epochs({**figures, "eval_last": 3}, 8.0, 123.0, 0.0, 300) == 10  # 3 x 16 + 7 x 10
    assert gather.fit_epochs({**figures, "eval_last": 3}, 8.0, 40.0, 0.0, 300) == 2  # fewer than N fit


def test_ferplus_majority_labels(training_rows):
    from training.ferplus import majority_accuracy, majority_labels
    votes = np.zeros((5, 10), np.uint8)
    votes[0, [1, 2]] = (6, 4)      # happiness leads
    votes[1, [7, 0]] = (6, 4)      # contempt leads: none of our classes
    votes[2, [3, 4]] = (5, 5)      # a tie
    votes[3, 9] = 10               # not a face
    votes[4, [6, 8]] = (7, 3)      # fear leads
    index = np.array([1, 2, 3, 4, 5274])  # the last one's votes belong to another image
    assert majority_labels(votes, index).tolist() == [CLASSES.index("HAPPY"), -1, -1, -1, -1]
    index[4] = 6
    assert majority_labels(votes, index)[4] == CLASSES.index("FEAR")
    assert majority_accuracy(np.array([3, 0, 0, 0, 2]), majority_labels(votes, index)) == {"n": 2, "accuracy": 1.0}
    # on the real Training rows: most have a majority, and it is mostly FER2013's label
    _, labels, index, real = training_rows
    majority = majority_labels(real, index)
    kept = majority >= 0
    assert 0.8 < kept.mean() < 1.0, kept.mean()
    assert (majority[kept] == labels[kept]).mean() > 0.6


def test_the_manifest_reports_ferplus_majority_accuracy(publictest, publictest_logits):
    """The manifest's FER+ majority-vote figure (as served: plain or flip-averaged) is what
    the served fp32 graph scores against the FER+ majority of the real PublicTest votes."""
    from training.ferplus import majority_accuracy, majority_labels
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    recorded = manifest["metrics"]["ferplus_majority"]
    index = load_split_index(DEFAULT_DATA, PUBLIC_TEST)
    majority = majority_labels(load_votes(DEFAULT_VOTES, index), index)
    measured = majority_accuracy(publictest_logits("fp32").argmax(1), majority)
    served = "flip" if manifest["flip_average"] else "plain"
    assert measured["n"] == recorded[served]["n"] == 3372
    assert measured["accuracy"] == pytest.approx(recorded[served]["accuracy"], abs=2e-3)
    # FER+'s labels are another question than FER2013's: the figures differ, but not by much
    assert abs(recorded["plain"]["accuracy"] - manifest["metrics"]["accuracy"]) < 0.05


def test_a_limited_runs_metrics_leave_out_ferplus(publictest):
    """training.train --limit evaluates a few PublicTest rows: their manifest metrics are
    written without the FER+ figure (which needs all of PublicTest), not an IndexError."""
    from training.common import shipped_metrics
    from training.network import load_network
    images, labels = publictest
    metrics = shipped_metrics(load_network(SHIPPED), images[:40], labels[:40], data=DEFAULT_DATA)
    assert metrics["n"] == 40 and "ferplus_majority" not in metrics
