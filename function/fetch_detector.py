"""Put the face detector's model file (a third-party file, not in the repository) into a
directory, checked against its sha256.

The one place that names the file, its download URL and its sha256 is
layers/detector/detector.json.  The file is taken from the first of ``--local``
directories that holds it with the right sha256 (an offline copy, such as
../shared/models/yunet), else downloaded from the URL; a file whose sha256 differs is
refused, never written.  Used by ``make setup`` and by the image build (Dockerfile), so
both get the same bytes.  Standard library only: it runs before anything is installed.

    python3 function/fetch_detector.py --spec layers/detector/detector.json --dir layers/detector [--local DIR ...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(spec: dict, directory: Path, local: list[Path], timeout: float = 60) -> str:
    """Make ``directory / spec['file']`` hold the right bytes; return where they came from."""
    target = directory / spec["file"]
    candidates = [target] + [Path(d) / spec["file"] for d in local]
    for path in candidates:
        if path.is_file():
            data = path.read_bytes()
            if sha256_of(data) == spec["sha256"]:
                origin = str(path)
                break
            print(f"fetch_detector: {path} has sha256 {sha256_of(data)}, not {spec['sha256']}: ignored",
                  file=sys.stderr)
    else:
        with urllib.request.urlopen(spec["url"], timeout=timeout) as response:
            data = response.read()
        if sha256_of(data) != spec["sha256"]:
            raise SystemExit(f"fetch_detector: {spec['url']} sent {len(data)} bytes with sha256 "
                             f"{sha256_of(data)}, not {spec['sha256']}: refused")
        origin = spec["url"]
    if origin != str(target):
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, delete=False) as tmp:
            tmp.write(data)
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, target)
    return origin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=Path(__file__).resolve().parents[1] / "layers/detector/detector.json")
    parser.add_argument("--dir", type=Path, required=True, help="where the file goes")
    parser.add_argument("--local", type=Path, action="append", default=[],
                        help="a directory that may hold an offline copy (repeatable)")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    origin = fetch(spec, args.dir, args.local)
    print(f"fetch_detector: {args.dir / spec['file']} (sha256 {spec['sha256'][:12]}…) from {origin}")


if __name__ == "__main__":
    main()
