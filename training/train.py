"""Train the ResNet9 on FER2013 and ship the best weights to layers/model/.

    python -m training.train                        # from scratch: the defaults are the shipped weights' recipe
    python -m training.train --resume               # go on from the last checkpoint
    python -m training.train --epochs 6 --init DIR  # a new schedule from shipped weights
    python -m training.train --init layers/model --soft-labels ../shared/data/fer2013/ferplus_votes_train_val.npz \
        --lr 2e-4 --epochs 6 --keep-epochs 3       # FER+ soft labels, warm start; then SWA:
    python -m training.average CHECKPOINT_DIR/epoch-00[456].pt --input-from layers/model --out DIR
    python -m training.train --teacher RUN_A --teacher RUN_B --teacher RUN_C   # distil an ensemble into one

--teacher (repeatable) distils: the teachers' averaged predictions (each on the augmented
batch and its mirror image, softened by --distil-temperature) are a second target beside
the labels, weighted by --distil-weight (Hinton et al., 2015: the soft term scaled by T^2).

--mixup ALPHA / --cutmix ALPHA mix each augmented batch with a shuffled copy of itself
(Zhang et al., 2018; Yun et al., 2019; with both, each batch draws one of the two), the
label targets mixed in the same proportion; teachers see the mixed images.  --ema DECAY
keeps an exponential moving average of the weights (BatchNorm statistics included),
and the average is what is evaluated, kept and exported (the raw weights' figures are
logged beside it).

--init starts from the weights of a model directory (manifest.json + weights, as in
layers/model/) and keeps its input normalisation; the new manifest records the sha256
and training command of those weights, so the whole chain can be repeated.

Checkpoints (every --save-every steps and at each epoch's end) go to --checkpoint-dir,
outside the work tree; --resume continues exactly where the last one stopped (same data
order, same augmentation).  Whenever PublicTest accuracy (with flip averaging) improves,
the weights are kept (checkpoint-dir/best.pt); when the run ends, at the schedule's end or
stopped by SIGTERM or Ctrl-C (a device call's time limit), the best weights kept are
exported in fp16 with their manifest to --out, once; the manifest's metrics are those of
the exported fp16 weights (training.common.update_manifest, the same as `python -m
training.evaluate --update-manifest`).  (Exporting at every improvement cost about as
much as an evaluation per epoch, and in a one-cycle run nearly every epoch improves.)
--eval-last N evaluates only the last N epochs (a one-cycle schedule's best is at its low
learning rates, near the end): on the H200, evaluation and export took about 4 s of a 9.75 s epoch.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.common import (CLASSES, DEFAULT_DATA, PUBLIC_TEST, ROOT, TRAINING, ResNet, evaluate, input_spec,
                             load_split, sha256_file, to_tensor, update_manifest)
from emotion.model import available_cpus  # noqa: E402  (path set up by training.common)
from training.network import export_weights, load_network  # noqa: E402

DEFAULT_CHECKPOINTS = Path(os.environ.get("EMOTION_CHECKPOINTS", Path.home() / ".cache" / "emotion-resnet9"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz (images, labels, usage)")
    p.add_argument("--epochs", type=int, default=70)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate of the one-cycle schedule (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--erasing", type=float, default=0.5, help="probability of random erasing")
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--threads", type=int, default=available_cpus())
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on where --device computes bf16 natively: a cuda GPU that "
                        "supports it, or a CPU with AVX-512 BF16/AMX; elsewhere it is emulated and slower than fp32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when there is one); the data, augmentation and mixing run there, "
                        "their random numbers are drawn on the CPU (the same images on either)")
    p.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINTS)
    p.add_argument("--resume", action="store_true", help="continue from checkpoint-dir/last.pt")
    p.add_argument("--init", type=Path, help="start from the weights of this model directory (warm start)")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    p.add_argument("--out", type=Path, default=ROOT / "layers" / "model", help="where the best weights go")
    p.add_argument("--no-export", action="store_true", help="never write --out")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training and N validation rows")
    p.add_argument("--soft-labels", type=Path, metavar="VOTES_NPZ",
                   help="train on FER+ soft labels from this votes file (training/ferplus.py)")
    p.add_argument("--soft-weight", type=float, default=0.5,
                   help="weight of the FER+ votes in the target; the rest is FER2013's one-hot label")
    p.add_argument("--keep-epochs", type=int, default=0, metavar="K",
                   help="keep the weights of the last K epochs (epoch-NNN.pt in --checkpoint-dir) for "
                        "python -m training.average (stochastic weight averaging)")
    p.add_argument("--teacher", type=Path, action="append", metavar="MODEL_DIR",
                   help="distil from this model directory (repeat for an ensemble: their probabilities are averaged)")
    p.add_argument("--distil-weight", type=float, default=0.7,
                   help="weight of the teachers' soft target; the rest is the label loss")
    p.add_argument("--distil-temperature", type=float, default=2.0,
                   help="temperature of the teachers' and the student's softmax in the soft term")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup: the mixing weight drawn from Beta(ALPHA, ALPHA) per batch (0: off)")
    p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA",
                   help="cutmix: the kept area drawn from Beta(ALPHA, ALPHA) per batch (0: off)")
    p.add_argument("--probe", type=int, default=0, metavar="STEPS",
                   help="time STEPS steps of this schedule and one evaluation, print them as JSON and stop, "
                        "writing no checkpoint, log or weights (for choosing --epochs to fit a time budget)")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="evaluate and export an exponential moving average of the weights, e.g. 0.998 (0: off)")
    p.add_argument("--eval-last", type=int, default=0, metavar="N",
                   help="evaluate PublicTest only after the last N epochs (0: after every epoch); the "
                        "epochs before log their training figures only and are never kept as the best")
    args = p.parse_args(argv)
    if args.bf16 is None:
        args.bf16 = native_bf16(args.device)
    return args


def native_bf16(device: str) -> bool:
    """Whether bf16 autocast runs natively on this device (else it is emulated, slower than fp32)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Teachers:
    """An ensemble of trained networks (model directories) whose averaged probabilities,
    on a batch and its mirror image, are the student's soft target.  Each teacher sees
    the batch normalised as its own manifest says (the student's batch is normalised by
    the student's ``mean``/``std``)."""

    def __init__(self, directories: list[Path], mean: float, std: float, device: str, bf16: bool):
        self.loaded = [load_network(d) for d in directories]
        for t in self.loaded:
            t.net.to(device, memory_format=torch.channels_last).eval()
        self.mean, self.std, self.device, self.bf16 = mean, std, torch.device(device), bf16

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """(N, 7) averaged ``softmax(logits / temperature)`` of every teacher, with flip."""
        x = x.to(self.device) * self.std + self.mean  # back to pixel / 255
        total = 0
        for t in self.loaded:
            spec = t.manifest["input"]
            xt = ((x - spec["mean"]) / spec["std"]).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                for view in (xt, torch.flip(xt, dims=[3])):
                    total = total + torch.softmax(t.net(view).float() / temperature, dim=1)
        return total / (2 * len(self.loaded))

    def describe(self) -> list[dict]:
        return [{"sha256": t.sha256, "accuracy_flip": t.manifest.get("metrics", {}).get("accuracy_flip"),
                 "command": t.manifest.get("training", {}).get("command")} for t in self.loaded]


def distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the student's ``softmax(logits / T)`` against the teachers'
    probabilities (at the same T), times T^2 so that its gradients keep their scale as T
    changes (it differs from the KL divergence by the teachers' entropy, a constant)."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    return -(teacher_probs * log_p).sum(dim=1).mean() * temperature ** 2


def augment(x: torch.Tensor, gen: torch.Generator, erasing: float) -> torch.Tensor:
    """Batched augmentation of normalised (N,1,48,48) images: horizontal flip, rotation
    +-10 degrees, scale 0.9-1.1, shift +-4 px (one affine warp, border replicated),
    then random erasing of one rectangle (2-20 % of the area) with probability ``erasing``.

    Every random number is drawn on the CPU from ``gen`` (the same draws, in the same
    order, whatever the device), and the warp and the erasing run where ``x`` is: on a
    GPU the batch never comes back to the host."""
    n, device = x.shape[0], x.device
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    angle = (u(n) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * u(n)
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    shift = (u(n, 2) * 2 - 1) * (4 / 24)  # affine_grid works in [-1, 1]: 24 px per unit
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(device, non_blocking=True), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if erasing > 0:
        area = 48 * 48 * (0.02 + 0.18 * u(n))
        ratio = torch.exp((u(n) * 2 - 1) * math.log(3))
        h = (area * ratio).sqrt().clamp(1, 47).long()
        w = (area / ratio).sqrt().clamp(1, 47).long()
        top = (u(n) * (48 - h + 1)).long()
        left = (u(n) * (48 - w + 1)).long()
        rows = torch.arange(48).view(1, 48, 1)
        cols = torch.arange(48).view(1, 1, 48)
        box = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
               & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))
        box &= (u(n) < erasing).view(-1, 1, 1)
        noise = torch.randn(x.shape, generator=gen)
        x = torch.where(box.unsqueeze(1).to(device, non_blocking=True), noise.to(device, non_blocking=True), x)
    return x


def label_targets(y: torch.Tensor, smoothing: float, n_classes: int = len(CLASSES)) -> torch.Tensor:
    """One-hot targets of labels ``y`` with label smoothing, as F.cross_entropy's
    ``label_smoothing`` builds them: (1 - smoothing) on the label, smoothing / n on each class."""
    return F.one_hot(y.long(), n_classes).float() * (1 - smoothing) + smoothing / n_classes


def mix(x: torch.Tensor, target: torch.Tensor, gen: torch.Generator, mixup: float,
        cutmix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix of a batch with a shuffled copy of itself (which one is drawn when
    both are on).  Mixup: ``lam * x + (1 - lam) * x[perm]``; cutmix: a box of ``x[perm]``
    covering about ``1 - lam`` of the image pasted in (lam then set to the area actually
    kept).  The targets are mixed with the same lam.  Everything is drawn from ``gen``."""
    rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=gen)))
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(*(2 * [cutmix if use_cutmix else mixup])))
    perm = torch.from_numpy(rng.permutation(len(x))).to(x.device)
    if use_cutmix:
        side = x.shape[-1]
        h = w = int(round(side * math.sqrt(1 - lam)))
        top, left = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
        x = x.clone()
        x[..., top:top + h, left:left + w] = x[perm][..., top:top + h, left:left + w]
        lam = 1 - h * w / side ** 2
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * target + (1 - lam) * target[perm]


def train_step(model, optimizer, x, y, label_smoothing: float, bf16: bool,
               target: torch.Tensor | None = None, teacher: torch.Tensor | None = None,
               distil_weight: float = 0.0, distil_temperature: float = 1.0) -> tuple[float, float]:
    """One optimisation step; returns (loss, accuracy against ``y``) on the batch, as
    0-d tensors on the training device (reading them is left to the caller, so that a
    GPU's queue is not drained at every step: ``float(loss)`` is one such read).
    ``target``: soft targets (N, 7) that sum to 1 (FER+ votes, mixed labels), which replace
    ``y`` and label smoothing in the label loss (cross-entropy against a distribution);
    the accuracy is then still against ``y``, the unmixed images' labels.
    ``teacher``: the teachers' probabilities (N, 7) at ``distil_temperature``; the loss is
    then ``distil_weight * distillation_loss + (1 - distil_weight) * label loss``."""
    model.train()
    device = next(model.parameters()).device
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x.contiguous(memory_format=torch.channels_last))
        if target is None:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        else:
            loss = -(target.to(device) * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
        if teacher is not None:
            loss = (distil_weight * distillation_loss(logits, teacher.to(device), distil_temperature)
                    + (1 - distil_weight) * loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == y).float().mean()


def update_average(ema: torch.optim.swa_utils.AveragedModel, model: torch.nn.Module, first: bool) -> None:
    """``ema.update_parameters(model)`` (its ``multi_avg_fn`` over the parameters and
    buffers, the same arithmetic) without its host reads of ``ema.n_averaged``, a tensor on
    the training device that torch 2.13 compares on the host twice per update: ``first``
    (whether nothing has been averaged yet) is known to the caller."""
    averaged = [*ema.module.parameters(), *ema.module.buffers()]
    current = [*model.parameters(), *model.buffers()]
    with torch.no_grad():
        if first:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
        else:
            for floating in (True, False):  # the library's EMA lerps floats and rounds the rest
                group = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point() == floating]
                if group:
                    ema.multi_avg_fn([a for a, _ in group], [c for _, c in group], None)
        ema.n_averaged += 1


PROBE_WARMUP = 3  # steps a probe does not time: cuDNN's choice of kernels, the first allocations


def probe(steps: int, steps_per_epoch: int, epoch_order, one_step, validate, epoch_end, finish,
          device: torch.device) -> dict:
    """How long the schedule's first ``steps`` steps (after ``PROBE_WARMUP``), one epoch-end
    evaluation, the writing after it (``epoch_end(result)``: the checkpoint and the kept
    weights, which a run writes only when an epoch improves, so an upper bound) and the
    run's one export at its end (``finish(result)``) take, here and now (other runs sharing
    the device included): for choosing ``--epochs`` to fit a time budget
    (training/device/sweep.sh's @EPOCHS).  ``seconds_per_epoch`` is an evaluated epoch's."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    orders: dict[int, torch.Tensor] = {}

    def step(i: int) -> None:
        epoch, within = divmod(i, steps_per_epoch)
        if epoch not in orders:
            orders[epoch] = epoch_order(epoch)
        one_step(epoch, within, orders[epoch])

    started = time.time()
    for i in range(PROBE_WARMUP):
        step(i)
    synchronize()
    warmup = time.time() - started
    started = time.time()
    for i in range(PROBE_WARMUP, PROBE_WARMUP + steps):
        step(i)
    synchronize()
    per_step = (time.time() - started) / steps
    started = time.time()
    result, _ = validate()
    synchronize()
    evaluation = time.time() - started
    started = time.time()
    epoch_end(result)
    writing = time.time() - started
    started = time.time()
    finish(result)
    export_seconds = time.time() - started
    return {"steps": steps, "seconds_per_step": round(per_step, 5), "steps_per_epoch": steps_per_epoch,
            "warmup_steps": PROBE_WARMUP, "warmup_seconds": round(warmup, 3),
            "evaluation_seconds": round(evaluation, 3), "writing_seconds": round(writing, 3),
            "export_seconds": round(export_seconds, 3),
            "seconds_per_epoch": round(per_step * steps_per_epoch + evaluation + writing, 3),
            "device": str(device)}


def checkpoint_args(args: argparse.Namespace) -> dict:
    """The command's settings as a checkpoint records them (paths as strings)."""
    def plain(v):
        return str(v) if isinstance(v, Path) else [plain(i) for i in v] if isinstance(v, list) else v
    return {k: plain(v) for k, v in vars(args).items()}


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training", "function/emotion/model.py"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt_dir = args.checkpoint_dir
    if not args.probe:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    train_x, train_y = load_split(args.data, TRAINING)
    val_x, val_y = load_split(args.data, PUBLIC_TEST)
    if args.limit:
        train_x, train_y, val_x, val_y = train_x[:args.limit], train_y[:args.limit], val_x[:args.limit], val_y[:args.limit]
    mean = float(train_x.mean() / 255.0)
    std = float(train_x.std() / 255.0)
    init = load_network(args.init) if args.init else None
    if init:  # the warm start keeps the normalisation its weights were trained with
        mean, std = init.manifest["input"]["mean"], init.manifest["input"]["std"]
    # The whole training set lives on the training device (265 MB in fp32), so that a step
    # indexes it there; nothing of a step comes back to the host (train_step, update_average).
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    train_t = to_tensor(train_x, mean, std).to(device)
    labels_t = torch.from_numpy(train_y).to(device)
    targets_t = None
    if args.soft_labels:
        from training.ferplus import load_split_index, load_votes, soft_targets
        index = load_split_index(args.data, TRAINING)[:len(train_y)]
        targets_t = torch.from_numpy(soft_targets(load_votes(args.soft_labels, index), train_y, index,
                                                  args.soft_weight)).to(device)
    if not 0.0 <= args.distil_weight <= 1.0 or args.distil_temperature <= 0:
        sys.exit("--distil-weight must be in [0, 1] and --distil-temperature above 0")
    if args.mixup < 0 or args.cutmix < 0 or not 0.0 <= args.ema < 1.0 or args.eval_last < 0:
        sys.exit("--mixup and --cutmix must be 0 (off) or above, --ema in [0, 1), --eval-last 0 (all) or above")
    mixing = args.mixup > 0 or args.cutmix > 0
    teachers = Teachers(args.teacher, mean, std, args.device, args.bf16) if args.teacher else None
    steps_per_epoch = math.ceil(len(train_t) / args.batch_size)

    torch.manual_seed(args.seed)
    model = (init.net if init else ResNet()).to(args.device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                    steps_per_epoch=steps_per_epoch, pct_start=0.2,
                                                    div_factor=10)
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema),
                                               use_buffers=True) if args.ema else None)
    net = ema.module if ema else model  # the weights evaluated, kept and exported
    state = {"epoch": 0, "step": 0, "best": -1.0, "seconds": 0.0}
    last = ckpt_dir / "last.pt"
    if args.resume and last.exists():
        ckpt = torch.load(last, map_location=args.device, weights_only=False)
        # a setting a checkpoint lacks was made before the setting existed: its default then
        now, before = checkpoint_args(args), {**checkpoint_args(parse_args([])), **ckpt["args"]}
        same = ("epochs", "batch_size", "lr", "seed", "soft_labels", "soft_weight", "teacher", "distil_weight",
                "distil_temperature", "mixup", "cutmix", "ema")
        if any(before[k] != now[k] for k in same):
            sys.exit(f"{last} was made with other settings ("
                     + ", ".join(f"--{k.replace('_', '-')} {before[k]}" for k in same)
                     + "); resume with the same values")
        model.load_state_dict(ckpt["model"])  # onto the model's device
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema:
            ema.load_state_dict(ckpt["ema"])
        state = ckpt["state"]
        print(f"resumed from {last}: epoch {state['epoch'] + 1}, step {state['step']}", flush=True)
    elif init:  # export only what beats the starting point
        state["best"] = init.manifest["metrics"]["accuracy_flip"]

    averaged = int(ema.n_averaged) if ema else 0  # the host's count of EMA updates
    running = torch.zeros(2, dtype=torch.float64, device=device)  # loss and accuracy sums not yet in state

    def fold():
        """The device's running sums into the state's (one host read)."""
        loss_sum, acc_sum = running.tolist()
        state["sums"][0] += loss_sum
        state["sums"][1] += acc_sum
        running.zero_()

    def save_checkpoint(last: Path = last):
        tmp = last.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state,
                    **({"ema": ema.state_dict()} if ema else {}), "args": checkpoint_args(args)}, tmp)
        tmp.replace(last)

    command = shlex.join(["python", "-m", "training.train", *(sys.argv[1:] if argv is None else argv)])
    data_sha = sha256_file(args.data)
    commit = git_commit()
    log_path = ckpt_dir / "log.jsonl"

    def export(out: Path, epoch: int, accuracy_flip: float) -> None:
        """The weights kept, as shipped (fp16) with their manifest, into ``out``."""
        # The manifest's metrics are those of the weights as shipped (fp16, normalised by
        # the manifest's input), as `python -m training.evaluate --update-manifest` computes
        # them; the fp32 figure that chose this epoch is kept in training.selected_by.
        export_weights(net, out, {
            "input": input_spec(mean, std),
            "training": {"command": command, "epochs": args.epochs, "best_epoch": epoch,
                         "selected_by": {"accuracy_flip_fp32": accuracy_flip},
                         "git_commit": commit, "data": args.data.name, "data_sha256": data_sha,
                         **({"soft_labels": {"votes": args.soft_labels.name,
                                             "votes_sha256": sha256_file(args.soft_labels),
                                             "weight": args.soft_weight,
                                             "recipe": "training/ferplus.py"}} if args.soft_labels else {}),
                         **({"distillation": {"teachers": teachers.describe(),
                                              "weight": args.distil_weight,
                                              "temperature": args.distil_temperature,
                                              "teacher_flip": True}} if teachers else {}),
                         **({"mixing": {"mixup_alpha": args.mixup, "cutmix_alpha": args.cutmix}}
                            if mixing else {}),
                         **({"ema": {"decay": args.ema, "use_buffers": True}} if ema else {}),
                         **({"init": {"sha256": init.sha256, "training": init.manifest.get("training")}}
                            if init else {}),
                         "seconds": round(state["seconds"]), "torch": torch.__version__,
                         "machine": f"{platform.machine()}, {args.device}, {args.threads} threads, "
                                    f"{'bf16 autocast' if args.bf16 else 'fp32'}"},
        })
        written = load_network(out)  # the fp16 weights as written, evaluated where training runs
        written.net.to(args.device)
        manifest = update_manifest(out, val_x, val_y, data=args.data, loaded=written)
        shipped = manifest["metrics"]
        print(f"exported weights to {out} (sha256 {manifest['sha256'][:12]}; as shipped: accuracy "
              f"{shipped['accuracy']}, flip {shipped['accuracy_flip']}, sample {shipped['sample']['accuracy']})",
              flush=True)

    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is a nicety, not a requirement
        tqdm = None

    def epoch_order(epoch: int) -> torch.Tensor:
        return torch.from_numpy(np.random.default_rng(args.seed * 1000 + epoch).permutation(len(train_t)))

    def one_step(epoch: int, step: int, order: torch.Tensor) -> int:
        """The schedule's step ``step`` of ``epoch`` (its batch, augmentation, mixing and
        targets all follow from the two), its loss and accuracy added to ``running``;
        returns the batch's size."""
        nonlocal averaged
        idx = order[step * args.batch_size:(step + 1) * args.batch_size].to(device, non_blocking=True)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch * 10_007 + step)
        torch.manual_seed(args.seed * 1_000_003 + epoch * 10_007 + step)  # dropout
        x = augment(train_t[idx], gen, args.erasing)
        target = None if targets_t is None else targets_t[idx]
        if mixing:
            x, target = mix(x, label_targets(labels_t[idx], args.label_smoothing) if target is None else target,
                            gen, args.mixup, args.cutmix)
        loss, acc = train_step(model, optimizer, x, labels_t[idx], args.label_smoothing, args.bf16, target,
                               teachers.probabilities(x, args.distil_temperature) if teachers else None,
                               args.distil_weight, args.distil_temperature)
        scheduler.step()
        if ema:
            update_average(ema, model, first=averaged == 0)
            averaged += 1
        running.add_(torch.stack([loss, acc]).double(), alpha=len(idx))
        return len(idx)

    def validate() -> tuple[dict, dict | None]:
        """PublicTest figures of the weights kept (and of the raw weights beside an EMA)."""
        return evaluate(net, val_x, val_y, mean, std), (evaluate(model, val_x, val_y, mean, std) if ema else None)

    if args.probe:
        if PROBE_WARMUP + args.probe > steps_per_epoch * args.epochs:
            print(f"--probe {args.probe}: the schedule has only {steps_per_epoch * args.epochs} steps "
                  f"({PROBE_WARMUP} of them untimed); probe fewer or give more --epochs", file=sys.stderr)
            return 2
        def epoch_end(result: dict) -> None:  # an improving epoch
            save_checkpoint(where / "last.pt")
            torch.save(net.state_dict(), where / "best.pt")

        def finish(result: dict) -> None:  # the run's end
            if not args.no_export:
                export(where / "model", 1, result["flip"]["accuracy"])

        with tempfile.TemporaryDirectory(prefix="probe-") as folder:  # what the run writes, then removed
            where = Path(folder)
            figures = probe(args.probe, steps_per_epoch, epoch_order, one_step, validate, epoch_end, finish, device)
        # with the epochs evaluated (0: all), for the fit (training/device/gather.fit_epochs)
        print(json.dumps({"probe": {**figures, "eval_last": args.eval_last}}), flush=True)
        return 0

    def export_best() -> None:
        """The best weights kept (best.pt), exported to --out: once, when the run ends."""
        if args.no_export or not state.get("best_epoch"):
            return  # nothing beat the start
        net.load_state_dict(torch.load(ckpt_dir / "best.pt", map_location=args.device))
        export(args.out, state["best_epoch"], state["best"])

    def stopped(signum, frame):  # SIGTERM (a time limit's timeout): end as Ctrl-C does
        raise KeyboardInterrupt(f"signal {signum}")

    def train_epochs() -> None:
        """The schedule's epochs from where the state stands (a resumed run: mid-epoch)."""
        while state["epoch"] < args.epochs:
            epoch = state["epoch"]
            order = epoch_order(epoch)
            bar = tqdm(total=steps_per_epoch, initial=state["step"], desc=f"epoch {epoch + 1}/{args.epochs}",
                       mininterval=1 if sys.stderr.isatty() else 60) if tqdm else None
            started = time.time()
            sums = state.setdefault("sums", [0.0, 0.0, 0])
            while state["step"] < steps_per_epoch:
                sums[2] += one_step(epoch, state["step"], order)
                state["step"] += 1
                if bar:
                    bar.update(1)
                    if state["step"] % 20 == 0:
                        fold()
                        bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}",
                                        lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
                if args.save_every and state["step"] % args.save_every == 0:
                    state["seconds"] += time.time() - started
                    started = time.time()
                    fold()
                    save_checkpoint()
            fold()
            if bar:
                bar.close()
            state["seconds"] += time.time() - started
            record = {"epoch": epoch + 1, "train_loss": round(sums[0] / sums[2], 4),
                      "train_accuracy": round(sums[1] / sums[2], 4), "lr": scheduler.get_last_lr()[0]}
            result = None
            if not args.eval_last or epoch + 1 > args.epochs - args.eval_last:
                result, raw = validate()
                record.update({
                    "val_accuracy": result["plain"]["accuracy"], "val_macro_f1": result["plain"]["macro_f1"],
                    "val_accuracy_flip": result["flip"]["accuracy"], "val_macro_f1_flip": result["flip"]["macro_f1"],
                    **({"raw_val_accuracy": raw["plain"]["accuracy"], "raw_val_accuracy_flip": raw["flip"]["accuracy"]}
                       if raw else {})})
            record["seconds"] = round(state["seconds"])
            print(json.dumps(record), flush=True)
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            state.update(epoch=epoch + 1, step=0, sums=[0.0, 0.0, 0])
            if epoch + 1 > args.epochs - args.keep_epochs:  # for stochastic weight averaging
                torch.save(net.state_dict(), ckpt_dir / f"epoch-{epoch + 1:03d}.pt")
            if result and result["flip"]["accuracy"] > state["best"]:
                state.update(best=result["flip"]["accuracy"], best_epoch=epoch + 1)
                torch.save(net.state_dict(), ckpt_dir / "best.pt")
            save_checkpoint()

    previous = signal.signal(signal.SIGTERM, stopped), signal.getsignal(signal.SIGINT)
    try:
        train_epochs()
        export_best()
    except KeyboardInterrupt:  # also one that cut the end's export short: it is made again
        print("stopped: exporting the best weights kept so far; --resume goes on from the last checkpoint",
              file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the export is not cut short by a second signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        export_best()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
