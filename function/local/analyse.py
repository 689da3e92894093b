"""Analyse a folder of photos on this machine, with the Lambda's own pipeline, no AWS.

    python -m local.analyse PATH... [--out FILE] [--annotate DIR] [--fallback MODE]

PATHs are files and folders.  Folders are walked recursively in sorted order (a
folder's files, then its subfolders), taking .jpg .jpeg .png .webp .bmp files (any
case) and skipping hidden names and our own *.annotated.jpg; a file named on the
command line is always tried.  One JSON line per photo goes to stdout (or FILE):
``{"path": ..., **answer}`` with the API's 200 body, or ``{"path": ..., "error":
{"code", "message"}}`` for a photo that could not be analysed; the run goes on.
With --annotate, the photo with its faces drawn is written to
DIR/<path under its folder, or the file's name>.annotated.jpg.  Exit status: 0 when
it ran (even with bad photos), 2 for a usage error or nothing to analyse.
Settings (MODEL_DIR, DETECTOR, ...) come from the environment, as in the Lambda.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from emotion.annotate import annotate
from emotion.config import FALLBACK_MODES, Settings
from emotion.errors import InputError
from emotion.images import DecodedImage
from emotion.pipeline import Pipeline

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
ANNOTATED = ".annotated.jpg"


def find_photos(args: list[str]) -> list[tuple[str, Path | None, str]]:
    """(path as shown, file or None when missing, name under --annotate) per photo."""
    found, seen = [], set()
    for arg in args:
        top = Path(arg)
        if top.is_dir():
            files = [(str(top / rel), top / rel, rel) for rel in walk(top)]
        else:
            files = [(arg, top if top.exists() else None, top.name)]
        for shown, path, rel in files:
            key = path.resolve() if path else arg
            if key not in seen:
                seen.add(key)
                found.append((shown, path, rel))
    return found


def walk(folder: Path) -> list[str]:
    """Image files under ``folder``, relative to it, in a deterministic order."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(root).relative_to(folder)
        out += [str(rel / f) for f in sorted(files) if not f.startswith(".") and not f.endswith(ANNOTATED)
                and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return out


def error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def analyse_one(pipeline: Pipeline, path: Path | None):
    """(record without "path", decoded image or None)."""
    if path is None:
        return error("not_found", "No such file or directory."), None
    try:
        image = pipeline.decode(path.read_bytes())
        return pipeline.analyse_image(image), image
    except InputError as exc:
        return exc.to_dict(), None
    except OSError as exc:
        return error("unreadable_file", exc.strerror or str(exc)), None
    except Exception as exc:  # noqa: BLE001 - one bad photo never stops the run
        return error("internal_error", f"{type(exc).__name__}: {exc}"[:200]), None


def destination(folder: Path, rel: str, used: set[Path]) -> Path:
    """DIR/<rel>.annotated.jpg, with -2, -3, ... when this run already wrote that name."""
    dest, n = folder / f"{rel}{ANNOTATED}", 1
    while dest.resolve() in used:
        n += 1
        dest = folder / f"{rel}-{n}{ANNOTATED}"
    used.add(dest.resolve())
    return dest


def write_annotated(folder: Path, rel: str, image: DecodedImage, faces: list[dict],
                    inputs: set[Path], used: set[Path]) -> bool:
    """Write the annotated photo; False (and a warning on stderr) when it cannot be."""
    dest = destination(folder, rel, used)
    try:
        if dest.resolve() in inputs:
            raise FileExistsError(f"{dest} is an input photo; not overwritten")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(annotate(image, faces))
        return True
    except OSError as exc:
        tqdm.write(f"local.analyse: cannot write the annotated photo: {exc}", file=sys.stderr)
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m local.analyse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="photos and folders of photos")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the JSON lines to FILE instead of stdout")
    p.add_argument("--annotate", type=Path, metavar="DIR", help="write each photo with its faces drawn under DIR")
    p.add_argument("--fallback", choices=FALLBACK_MODES, default="off",
                   help="when to ask Amazon Rekognition (default: off, a local run has no AWS; "
                        "the other modes need AWS credentials)")
    args = p.parse_args(argv)
    photos = find_photos(args.paths)
    if not any(path for _, path, _ in photos):
        missing = ", ".join(shown for shown, _, _ in photos)
        print(f"local.analyse: no image files to analyse{' (not found: ' + missing + ')' if missing else ''}",
              file=sys.stderr)
        return 2
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # not on EC2: never ask its metadata service
    try:
        settings = dataclasses.replace(Settings.from_env(), fallback_mode=args.fallback)
    except ValueError as exc:
        p.error(str(exc))
    pipeline = Pipeline(settings)
    try:
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    except OSError as exc:
        p.error(f"--out: {exc}")
    inputs = {path.resolve() for _, path, _ in photos if path}
    used: set[Path] = set()
    analysed = faces = errors = 0
    try:
        with tqdm(photos, unit="photo", file=sys.stderr, disable=None) as bar:
            for shown, path, rel in bar:
                record, image = analyse_one(pipeline, path)
                if image is None:
                    errors += 1
                else:
                    analysed += 1
                    faces += len(record["faces"])
                    if args.annotate and not write_annotated(args.annotate, rel, image, record["faces"], inputs, used):
                        errors += 1
                tqdm.write(json.dumps({"path": shown, **record}, ensure_ascii=False), file=out)
                out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"{analysed} photos analysed, {faces} faces found, {errors} errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
