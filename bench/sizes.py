"""The installed size of the runtime's dependencies as the Lambda image holds them:
function/requirements.txt and everything it pulls in (function/Dockerfile installs that
and nothing else; no torch).  Measured on this checkout's .venv, before and after
function/trim_site_packages.py's deletions; the largest files are listed apart."""
from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "function"))
from trim_site_packages import unneeded  # noqa: E402


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirements() -> list[str]:
    """The distributions function/requirements.txt names."""
    lines = (ROOT / "function" / "requirements.txt").read_text().splitlines()
    return [_name(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def closure(roots: list[str]) -> dict[str, metadata.Distribution]:
    """Every distribution the roots need (extras left out; other markers taken as true)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a marker-gated requirement that this platform does not install
        found[name] = dist
        for req in dist.requires or []:
            if "extra ==" not in req.replace("extra==", "extra =="):
                todo.append(_name(req))
    return found


def image_distributions() -> dict[str, metadata.Distribution]:
    """What function/Dockerfile installs: requirements.txt and its dependencies."""
    return closure(requirements())


def _files(dist: metadata.Distribution) -> list[tuple[str, int]]:
    """(path, bytes) of every installed file of ``dist`` that its RECORD lists."""
    paths = (Path(dist.locate_file(f)) for f in dist.files or [])
    return [(str(p), p.stat().st_size) for p in paths if p.is_file()]


def _mb(size: int) -> float:
    return round(size / 2**20, 1)


def sizes() -> dict:
    dists = image_distributions()
    site = Path(next(iter(dists.values())).locate_file(""))
    doomed = unneeded(site)
    doomed_dirs = tuple(str(p) + "/" for p in doomed if p.is_dir())
    doomed_files = {str(p) for p in doomed if not p.is_dir()}
    rows = []
    for name, dist in dists.items():
        files = _files(dist)
        kept = sum(size for p, size in files if p not in doomed_files and not p.startswith(doomed_dirs))
        rows.append({"name": name, "version": dist.version, "installed_mb": _mb(sum(size for _, size in files)),
                     "image_mb": _mb(kept)})
    rows.sort(key=lambda r: r["image_mb"], reverse=True)
    files = sorted(((p, size) for dist in dists.values() for p, size in _files(dist)
                    if p not in doomed_files and not p.startswith(doomed_dirs)), key=lambda x: -x[1])[:6]
    manifest = json.loads((ROOT / "layers" / "model" / "manifest.json").read_text())
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "distributions": rows,
        "installed_mb": round(sum(r["installed_mb"] for r in rows), 1),
        "image_mb": round(sum(r["image_mb"] for r in rows), 1),
        "largest_files_mb": {str(Path(p).relative_to(site)): _mb(size) for p, size in files},
        "model_mb": _mb(sum((ROOT / "layers" / "model" / name).stat().st_size
                            for name in ("manifest.json", manifest["onnx"]["file"], manifest["onnx_int8"]["file"]))),
    }


if __name__ == "__main__":
    print(json.dumps(sizes(), indent=1))
