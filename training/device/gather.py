"""The results of a device sweep (training/device/sweep.sh): packed there, unpacked here.

Here, after the `run` call (its files lie under the reply's files_at):

    python -m training.device.gather FILES_AT --to runs/device-1   # add --onnx to remake the graphs

checks every part's sha256, joins them, and writes one folder per run: log.jsonl (the
per-epoch log), run.json (command, exit status, seconds), stdout.log (its end) and, for
the runs whose weights came back, manifest.json + resnet9_fer2013.fp16.pt, sha256
checked against the manifest: a model directory for `python -m training.evaluate
--model-dir`, `--init` or `--teacher`.

On the device (sweep.sh calls these; they need no torch):

    python -m training.device.gather collect --tmp /tmp --out $OUT --keep 3 A B C
    python -m training.device.gather heartbeat --tmp /tmp A B C
    python -m training.device.gather epochs --tmp /tmp --left 480 A B C

epochs turns each run's probe (``training.train --probe``, for ARGS holding @EPOCHS) into
the number of epochs that fit the seconds left.

collect bundles every run's files into one tar, the weights of at most --keep runs (best
PublicTest accuracy with flip first, as long as they fit), split into parts under 16 MiB:
results.tar.00, .01, ... plus results.json (sha256 of each part and of the tar, a summary)
and summary.txt: at most 6 files and 64 MiB in all, as the device tool brings back.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

PART = (16 << 20) - (64 << 10)      # each file back: under 16 MiB
TOTAL = (64 << 20) - (64 << 10)     # all the parts together, leaving room for results.json and summary.txt
MAX_PARTS = 6                       # + results.json + summary.txt = 8 files at most
STDOUT_TAIL = 64 << 10
WEIGHTS = "resnet9_fer2013.fp16.pt"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def last_epoch(log: Path) -> dict | None:
    try:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def best_epoch(log: Path) -> dict | None:
    try:
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    rows = [r for r in rows if "val_accuracy_flip" in r]  # --eval-last: the epochs evaluated
    return max(rows, key=lambda r: r["val_accuracy_flip"]) if rows else None


# ---- on the device -----------------------------------------------------------------------

def heartbeat(tmp: Path, names: list[str]) -> str:
    parts = []
    for n in names:
        r = last_epoch(tmp / f"ck_{n}" / "log.jsonl")
        flip = f" {r['val_accuracy_flip']:.4f}" if r and "val_accuracy_flip" in r else ""  # --eval-last: not every epoch
        parts.append(f"{n}:e{r['epoch']}{flip}" if r else f"{n}:-")
    return " ".join(parts)


def probe_figures(log: Path) -> dict | None:
    """The JSON that ``training.train --probe`` printed last in ``log`` (None: none there)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("probe"), dict):
            return row["probe"]
    return None


def fit_epochs(figures: dict, probe_wall: float, left: float, margin: float, most: int) -> int:
    """The most epochs of a run whose probe (``figures``, which took ``probe_wall`` seconds
    from start to exit) says what an epoch costs, that end within ``left`` seconds with
    ``margin`` (a fraction) to spare: the run's start-up (the probe's wall time less what it
    timed) and its one export at the end, then every epoch: its steps, an evaluation and an
    improving epoch's writing (checkpoint and kept weights); with ``eval_last`` N (--eval-last),
    only the last N epochs evaluate and write, the others cost their steps alone.  At least 1,
    at most ``most``."""
    export = figures.get("export_seconds", 0.0)
    measured = (figures.get("warmup_seconds", 0.0) + figures["steps"] * figures["seconds_per_step"]
                + figures["evaluation_seconds"] + figures.get("writing_seconds", 0.0) + export)
    startup = max(0.0, probe_wall - measured)
    budget = left * (1.0 - margin) - startup - export
    evaluated, last = figures["seconds_per_epoch"], figures.get("eval_last", 0)
    fit = int(budget // evaluated)
    if last and fit > last:  # the epochs before the last N: steps only
        fit = last + int((budget - last * evaluated) // (figures["seconds_per_step"] * figures["steps_per_epoch"]))
    return max(1, min(most, fit))


def epochs(tmp: Path, left: float, margin: float, most: int, names: list[str]) -> list[str]:
    """One line per run, ``NAME EPOCHS``, from tmp/probe_NAME.log and tmp/probe_NAME.seconds
    (sweep.sh writes both); ``NAME -`` where the probe printed nothing."""
    lines = []
    for n in names:
        figures = probe_figures(tmp / f"probe_{n}.log")
        try:
            wall = float((tmp / f"probe_{n}.seconds").read_text())
        except (OSError, ValueError):
            wall = None
        ok = figures and wall is not None and figures.get("seconds_per_epoch", 0) > 0
        lines.append(f"{n} {fit_epochs(figures, wall, left, margin, most)}" if ok else f"{n} -")
    return lines


def collect(tmp: Path, out: Path, keep: int, names: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, bytes]] = []  # (name in the tar, bytes)
    runs, candidates = [], []
    for n in names:
        ck, model = tmp / f"ck_{n}", tmp / f"out_{n}"
        meta = (tmp / f"meta_{n}").read_text().split() if (tmp / f"meta_{n}").exists() else []
        rc = (tmp / f"rc_{n}").read_text().strip() if (tmp / f"rc_{n}").exists() else "not run"
        run = {"name": n, "command": (tmp / f"cmd_{n}").read_text().strip() if (tmp / f"cmd_{n}").exists() else None,
               "exit": rc, "stopped_by_wall_limit": rc in ("124", "137"),
               "stage": int(meta[0]) if meta else None, "threads": int(meta[1]) if meta else None,
               "seconds": None}
        if meta:  # start to end (to now when the end was not written: the collect's time)
            end = tmp / f"end_{n}"
            run["seconds"] = round((int(end.read_text()) if end.exists() else time.time()) - int(meta[2]))
        figures = probe_figures(tmp / f"probe_{n}.log")
        if figures:  # what @EPOCHS was fitted from, beside what the run then took
            wall = tmp / f"probe_{n}.seconds"
            run["probe"] = {**figures, **({"wall_seconds": float(wall.read_text())} if wall.exists() else {})}
        log = ck / "log.jsonl"
        if log.exists():
            files.append((f"{n}/log.jsonl", log.read_bytes()))
        stdout = tmp / f"stdout_{n}.log"
        if stdout.exists():
            data = stdout.read_bytes()
            files.append((f"{n}/stdout.log", data[-STDOUT_TAIL:]))
        last, best = last_epoch(log), best_epoch(log)
        run.update(epochs_logged=last["epoch"] if last else 0,
                   best_epoch=best["epoch"] if best else None,
                   best_val_accuracy_flip_fp32=best["val_accuracy_flip"] if best else None)
        manifest_path = model / "manifest.json"
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            weights = (model / manifest.get("weights", WEIGHTS))
            ok = weights.exists() and sha256_bytes(weights.read_bytes()) == manifest.get("sha256")
            run.update(export_sha256=manifest.get("sha256"), export_intact=ok,
                       exported_accuracy_flip=manifest.get("metrics", {}).get("accuracy_flip"),
                       exported_accuracy=manifest.get("metrics", {}).get("accuracy"))
            files.append((f"{n}/manifest.json", manifest_path.read_bytes()))
            if ok:
                candidates.append((manifest.get("metrics", {}).get("accuracy_flip") or 0.0, n, weights))
        runs.append(run)
    # weights: best first, while they fit
    size = sum(len(b) + 1024 for _, b in files) + 64 * 1024
    chosen = []
    for acc, n, weights in sorted(candidates, key=lambda c: (-c[0], c[1])):
        b = weights.stat().st_size + 1024
        if len(chosen) < keep and size + b <= min(TOTAL, PART * MAX_PARTS):
            chosen.append(n)
            size += b
            files.append((f"{n}/{weights.name}", weights.read_bytes()))
    for run in runs:
        run["weights_back"] = run["name"] in chosen
        files.append((f"{run['name']}/run.json", (json.dumps(run, indent=1) + "\n").encode()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    for old in out.glob("results.tar.*"):
        old.unlink()
    parts = []
    for k, start in enumerate(range(0, len(blob), PART)):
        piece = blob[start:start + PART]
        (out / f"results.tar.{k:02d}").write_bytes(piece)
        parts.append({"file": f"results.tar.{k:02d}", "bytes": len(piece), "sha256": sha256_bytes(piece)})
    lines = []
    for r in runs:
        lines.append(f"{r['name']}: exit {r['exit']}{' (wall limit)' if r['stopped_by_wall_limit'] else ''}, "
                     f"{r['epochs_logged']} epochs logged, best epoch {r['best_epoch']} "
                     f"(fp32 flip {r['best_val_accuracy_flip_fp32']}), exported fp16 flip "
                     f"{r.get('exported_accuracy_flip')} plain {r.get('exported_accuracy')}, "
                     f"weights {'back' if r['weights_back'] else 'left on the device' if r.get('export_intact') else 'none'}")
    summary = "\n".join(lines) + "\n"
    (out / "results.json").write_text(json.dumps({"tar_sha256": sha256_bytes(blob), "tar_bytes": len(blob),
                                                  "parts": parts, "runs": runs}, indent=1) + "\n")
    (out / "summary.txt").write_text(summary)
    print(summary, end="")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    count = sum(1 for p in out.iterdir())
    print(f"$OUT: {count} files, {total / (1 << 20):.2f} MiB ({len(parts)} part(s) of the tar)")
    if count > 8 or total > (64 << 20) or any(p["bytes"] > (16 << 20) for p in parts):
        print("over the device tool's limits on what comes back", file=sys.stderr)
        return 1
    return 0


# ---- here --------------------------------------------------------------------------------

def gather(fetched: Path, to: Path, onnx: bool) -> int:
    meta = json.loads((fetched / "results.json").read_text())
    blob = bytearray()
    for p in meta["parts"]:
        path = fetched / p["file"]
        if not path.exists():
            sys.exit(f"{path} is missing: fetch every part of the reply")
        data = path.read_bytes()
        if sha256_bytes(data) != p["sha256"]:
            sys.exit(f"{path}: sha256 differs from results.json")
        blob += data
    if sha256_bytes(bytes(blob)) != meta["tar_sha256"]:
        sys.exit("the joined tar's sha256 differs from results.json")
    to.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(bytes(blob)), mode="r") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 2 or ".." in parts or member.name.startswith("/"):
                sys.exit(f"unexpected entry in the results: {member.name}")
        tar.extractall(to, filter="data")
    (to / "results.json").write_text(json.dumps(meta, indent=1) + "\n")
    for run in meta["runs"]:
        d = to / run["name"]
        line = f"{d}: exit {run['exit']}, {run['epochs_logged']} epochs, best fp32 flip {run['best_val_accuracy_flip_fp32']}"
        if run.get("weights_back"):
            manifest = json.loads((d / "manifest.json").read_text())
            weights = d / manifest["weights"]
            if sha256_bytes(weights.read_bytes()) != manifest["sha256"]:
                sys.exit(f"{weights}: sha256 differs from its manifest")
            line += f"; weights sha256 {manifest['sha256'][:12]} checked, fp16 flip {run.get('exported_accuracy_flip')}"
            if onnx:
                from training.network import add_onnx
                add_onnx(d)
                line += ", ONNX graph remade"
        print(line)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["epochs"]:
        p = argparse.ArgumentParser(prog="python -m training.device.gather epochs")
        p.add_argument("--tmp", type=Path, default=Path("/tmp"))
        p.add_argument("--left", type=float, required=True, help="seconds the runs have from now")
        p.add_argument("--margin", type=float, default=0.1, help="fraction of --left kept spare")
        p.add_argument("--most", type=int, default=300, help="epochs at most")
        p.add_argument("names", nargs="+")
        a = p.parse_args(argv[1:])
        print("\n".join(epochs(a.tmp, a.left, a.margin, a.most, a.names)))
        return 0
    if argv[:1] in (["collect"], ["heartbeat"]):
        p = argparse.ArgumentParser(prog=f"python -m training.device.gather {argv[0]}")
        p.add_argument("--tmp", type=Path, default=Path("/tmp"))
        p.add_argument("--out", type=Path)
        p.add_argument("--keep", type=int, default=3)
        p.add_argument("names", nargs="+")
        a = p.parse_args(argv[1:])
        if argv[0] == "heartbeat":
            print(heartbeat(a.tmp, a.names))
            return 0
        if a.out is None:
            p.error("--out is needed")
        return collect(a.tmp, a.out, a.keep, a.names)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fetched", type=Path, help="the folder holding results.json and results.tar.NN")
    p.add_argument("--to", type=Path, required=True, help="one folder per run goes here")
    p.add_argument("--onnx", action="store_true", help="remake each model directory's ONNX graph (needs onnx)")
    a = p.parse_args(argv)
    return gather(a.fetched, a.to, a.onnx)


if __name__ == "__main__":
    raise SystemExit(main())
