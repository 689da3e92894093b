"""Delete what the Lambda runtime never uses from site-packages (run by function/Dockerfile
after each pip install, in the same layer; bench/sizes.py counts the same list).

tests/ directories and static libraries (*.a) anywhere; torch's C++ headers and CMake
files (include/, share/cmake/: only for compiling C++ extensions), its C++ test programs
(test/, bin/test_*, bin/*Test) and its protobuf compiler (bin/protoc*).  __pycache__
stays on purpose: site-packages is read-only in Lambda, so without the .pyc files every
cold start would compile torch's Python sources again (about 4 s more to import it).
Standard library only: the minimal base image has no find(1).
"""
from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path


def unneeded(site: Path) -> list[Path]:
    """The files and folders under ``site`` that the runtime never reads."""
    torch = site / "torch"
    found = [torch / "include", torch / "share" / "cmake", torch / "test",
             *torch.glob("bin/test_*"), *torch.glob("bin/*Test"), *torch.glob("bin/protoc*"),
             *(p for p in site.rglob("tests") if p.is_dir() and not p.is_symlink()),
             *site.rglob("*.a")]
    return [p for p in found if p.is_symlink() or p.exists()]


def trim(site: Path) -> None:
    for path in unneeded(site):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    trim(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sysconfig.get_paths()["purelib"]))
