"""Delete what the Lambda runtime never uses from site-packages (run by function/Dockerfile
after each pip install, in the same layer; bench/sizes.py counts the same list).

tests/ directories and static libraries (*.a) anywhere, and the parts of onnxruntime that
only build or convert models (quantisation, transformer tools, sample data) or serve
its C API (libonnxruntime.so: the Python binding has the runtime linked in; the handler
test runs on a copy trimmed by this list).  __pycache__ stays on purpose:
site-packages is read-only in Lambda, so without the .pyc files every cold start would
compile the dependencies' Python sources again.  Standard library only: the minimal
base image has no find(1).
"""
from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path


# onnxruntime's folders the serving code never imports, and its C API library
ONNXRUNTIME = ("onnxruntime/quantization", "onnxruntime/transformers", "onnxruntime/tools",
               "onnxruntime/datasets", "onnxruntime/capi/libonnxruntime.so.*")


def unneeded(site: Path) -> list[Path]:
    """The files and folders under ``site`` that the runtime never reads."""
    found = [*(p for p in site.rglob("tests") if p.is_dir() and not p.is_symlink()), *site.rglob("*.a"),
             *(p for pattern in ONNXRUNTIME for p in site.glob(pattern))]
    return [p for p in found if p.is_symlink() or p.exists()]


def trim(site: Path) -> None:
    for path in unneeded(site):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    trim(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sysconfig.get_paths()["purelib"]))
