"""Average the weights of several trained models (stochastic weight averaging).

    python -m training.average MODEL_DIR [MODEL_DIR | CHECKPOINT.pt ...] --out layers/model

Each warm restart of the training chain ends in a different point of the same basin;
the mean of those points usually generalises better than any one of them.  The
parameters are averaged with equal weight; the BatchNorm running statistics of the
mean are not the mean of the statistics, so they are recomputed by one pass over the
Training rows (``torch.optim.swa_utils.update_bn``, in train mode as in training).

Sources: model directories (manifest.json + weights, sha256-checked) or ``.pt`` files
that train.py writes (``best.pt`` state_dicts, ``last.pt`` checkpoints, ``epoch-NNN.pt``).
The input normalisation is the first model directory's; every model directory must agree
with it.  When every source is a ``.pt`` file (the epochs of one warm start, say),
``--input-from MODEL_DIR`` names the model directory whose normalisation they were trained
with (the one ``--init`` gave them); its weights are not averaged.
Prints the PublicTest figures of the average (plain and flip): without ``--out`` of the
fp32 average in memory; with ``--out`` it first exports the average (fp16) with a manifest
that records the sources and this command, and the figures are the manifest's metrics,
computed from the weights as shipped (PublicTest is evaluated once either way).
"""
from __future__ import annotations

import argparse
import json
import pickle
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from training.common import (DEFAULT_DATA, PUBLIC_TEST, TRAINING, ResNet, evaluate, evaluate_loaded, fixed_sample,
                             input_spec, load_split, sha256_file, to_tensor, update_manifest)
from training.train import git_commit
from emotion.model import WeightsError, available_cpus  # noqa: E402
from training.network import export_weights, load_network, network_from_state, state_dict_from_prototype  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", type=Path, help="model directories or train.py .pt files")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 npz (images, labels, usage)")
    p.add_argument("--out", type=Path, help="export the average here (manifest.json + fp16 weights)")
    p.add_argument("--input-from", type=Path, metavar="MODEL_DIR",
                   help="take the input normalisation from this model directory (its weights are not averaged)")
    p.add_argument("--batch-size", type=int, default=256, help="batch of the BatchNorm pass")
    p.add_argument("--bn-rows", type=int, default=0, metavar="N",
                   help="recompute BatchNorm on N fixed Training rows (default: all 28,709; about 12 min on 2 cores)")
    p.add_argument("--threads", type=int, default=available_cpus())
    return p.parse_args(argv)


def load_source(path: Path) -> tuple[dict, dict | None]:
    """fp32 state_dict of one source, and its manifest when it is a model directory;
    a source that cannot be read, or is not a ResNet9's weights, stops the command
    with a message that names it."""
    try:
        if path.is_dir():
            loaded = load_network(path)
            return loaded.net.state_dict(), loaded.manifest
        state = state_dict_from_prototype(torch.load(path, map_location="cpu", weights_only=False))
    except (OSError, WeightsError, RuntimeError, AttributeError, EOFError, KeyError, TypeError, ValueError,
            pickle.UnpicklingError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.exit(f"refused: {path}: not readable as weights ({reason})")
    try:
        return network_from_state(state).state_dict(), None
    except (RuntimeError, AttributeError, TypeError):
        sys.exit(f"refused: {path}: not the ResNet9's parameters (names or shapes differ)")


def input_manifest(directory: Path) -> dict:
    """The manifest of the model directory --input-from names (only its ``input`` is used)."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["input"]["mean"], manifest["input"]["std"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"refused: --input-from {directory}: no manifest.json with an input normalisation ({exc})")
    return manifest


def average_states(states: list[dict]) -> dict:
    """Equal-weight mean of the floating-point entries; the rest (BatchNorm's batch
    counters) from the first state."""
    return {k: (torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v.clone())
            for k, v in states[0].items()}


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Fresh BatchNorm running statistics: their plain mean over every batch of x."""
    batches = [x[i:i + batch_size].contiguous(memory_format=torch.channels_last)
               for i in range(0, len(x), batch_size)]
    torch.optim.swa_utils.update_bn(batches, model)
    model.eval()


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    loaded = [load_source(p) for p in args.sources]
    manifests = [m for _, m in loaded if m is not None]
    if args.input_from:
        manifests.insert(0, input_manifest(args.input_from))
    if not manifests:
        sys.exit("give at least one model directory, or --input-from one: its manifest says how inputs are normalised")
    spec = manifests[0]["input"]
    if any(m["input"] != spec for m in manifests):
        sys.exit("the model directories normalise their inputs differently; they cannot be averaged")

    model = ResNet()
    model.load_state_dict(average_states([s for s, _ in loaded]))
    model = model.to(memory_format=torch.channels_last)
    train_x, train_y = load_split(args.data, TRAINING)
    if args.bn_rows:
        train_x, _ = fixed_sample(train_x, train_y, n=args.bn_rows)
    recompute_batchnorm(model, to_tensor(train_x, spec["mean"], spec["std"]), args.batch_size)
    val_x, val_y = load_split(args.data, PUBLIC_TEST)
    if args.out:
        command = shlex.join(["python", "-m", "training.average", *(sys.argv[1:] if argv is None else argv)])
        export_weights(model, args.out, {
            "input": input_spec(spec["mean"], spec["std"]),
            "training": {"command": command, "epochs": 0, "git_commit": git_commit(),
                         "method": "no training epochs: an equal-weight average of the sources' parameters, "
                                   "BatchNorm statistics recomputed on Training",
                         "sources": [{"path": str(p), **({"sha256": m["sha256"], "training": m.get("training")}
                                                         if m else {"sha256": sha256_file(p)})}
                                     for p, (_, m) in zip(args.sources, loaded)],
                         **({"input_from": str(args.input_from)} if args.input_from else {}),
                         "data": args.data.name, "data_sha256": sha256_file(args.data),
                         "torch": torch.__version__,
                         "machine": f"{platform.machine()}, cpu, {args.threads} threads"},
        })
        exported = load_network(args.out)  # the weights as shipped: fp16, sha256-checked
        weights, result = "fp16_as_exported", evaluate_loaded(exported, val_x, val_y)
        manifest = update_manifest(args.out, val_x, val_y, full=result, data=args.data, loaded=exported)
    else:
        weights, result = "fp32", evaluate(model, val_x, val_y, spec["mean"], spec["std"])
    figures = {"accuracy": result["plain"]["accuracy"], "macro_f1": result["plain"]["macro_f1"],
               "accuracy_flip": result["flip"]["accuracy"], "macro_f1_flip": result["flip"]["macro_f1"]}
    print(json.dumps({"sources": [str(p) for p in args.sources], weights: figures,
                      "seconds": round(time.time() - started)}), flush=True)
    if args.out:
        print(f"exported the average to {args.out} (sha256 {manifest['sha256'][:12]}; as shipped: accuracy "
              f"{figures['accuracy']}, flip {figures['accuracy_flip']})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
