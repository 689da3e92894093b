"""The installed size of the runtime's dependencies as the Lambda image holds them:
function/requirements.txt and everything it pulls in, plus torch alone (function/Dockerfile
installs it with --no-deps: the runtime imports none of its dependencies but
typing_extensions, which requirements.txt pins).  Measured on this checkout's .venv,
before and after function/trim_site_packages.py's deletions; torch's dependencies that
the image leaves out are listed apart."""
from __future__ import annotations

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
    """What function/Dockerfile installs: torch without its dependencies, then requirements.txt."""
    return {"torch": metadata.distribution("torch"), **closure(requirements())}


def left_out(image: dict[str, metadata.Distribution] | None = None) -> dict[str, metadata.Distribution]:
    """torch's dependencies (and theirs) that the image (image_distributions) does not install."""
    image = image_distributions() if image is None else image
    return {name: dist for name, dist in closure(["torch"]).items() if name not in image}


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
    torch_dir = site / "torch"
    torch_parts = {}
    for sub in ("lib", "include", "_inductor", "testing", "distributed", "share"):
        path = torch_dir / sub
        if path.exists():
            torch_parts[sub] = round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)
    libs = sorted(((f.name, f.stat().st_size) for f in (torch_dir / "lib").glob("*.so*")), key=lambda x: -x[1])[:5]
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "distributions": rows,
        "installed_mb": round(sum(r["installed_mb"] for r in rows), 1),
        "image_mb": round(sum(r["image_mb"] for r in rows), 1),
        "left_out": [{"name": name, "version": dist.version, "installed_mb": _mb(sum(size for _, size in _files(dist)))}
                     for name, dist in sorted(left_out(dists).items())],
        "torch_parts_mb": torch_parts,
        "torch_largest_libs_mb": {n: round(s / 2**20, 1) for n, s in libs},
        "model_mb": round(sum(f.stat().st_size for f in (ROOT / "layers" / "model").iterdir()) / 2**20, 1),
    }


if __name__ == "__main__":
    import json
    print(json.dumps(sizes(), indent=1))
