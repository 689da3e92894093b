"""`make audit`: known vulnerabilities of what the Lambda image installs.

pip-audit cannot work from this project's machines: the registry they reach answers
PyPI's project JSON (/pypi/<name>/json, whose "vulnerabilities" are those of the
project's latest release) but not the per-version JSON pip-audit asks for, nor OSV.
So this does what can be done from here: resolve function/requirements.txt for the
image (CPython 3.12, manylinux x86_64, every transitive dependency, nothing installed),
then for each distribution read its project JSON.  A pin that is the latest release is
checked against PyPI's advisories; an older pin cannot be checked from here and is
listed as such.  Exit 1 when a pinned release has a known vulnerability; 0 otherwise
(what could not be checked is printed, never hidden); 2 when the registry cannot be
reached at all.

    python .ci/audit.py [--requirements function/requirements.txt] [--markdown]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def resolved(requirements: Path) -> dict[str, str]:
    """name -> version of everything the image would install."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--platform",
                        "manylinux_2_28_x86_64", "--python-version", "3.12", "--implementation", "cp",
                        "--abi", "cp312", "--target", str(Path(tmp) / "t"), "--report", str(report),
                        "-r", str(requirements)], check=True)
        install = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in install}


def project(name: str) -> dict:
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as answer:
        return json.load(answer)


def audit(packages: dict[str, str]) -> list[dict]:
    rows = []
    for name, version in sorted(packages.items()):
        data = project(name)
        latest = data["info"]["version"]
        row = {"name": name, "version": version, "latest": latest}
        if version == latest:
            vulns = [v for v in data.get("vulnerabilities") or [] if not v.get("withdrawn")]
            row.update(checked=True, vulnerabilities=[v.get("id") for v in vulns])
        else:
            row.update(checked=False, vulnerabilities=[])
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requirements", type=Path, default=ROOT / "function" / "requirements.txt")
    p.add_argument("--markdown", action="store_true", help="a table for the README")
    args = p.parse_args(argv)
    try:
        rows = audit(resolved(args.requirements))
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"audit: the registry could not be reached ({exc}); nothing was checked", file=sys.stderr)
        return 2
    found = [r for r in rows if r["vulnerabilities"]]
    unchecked = [r for r in rows if not r["checked"]]
    if args.markdown:
        print("| distribution | pinned | latest | known vulnerabilities |\n|---|---|---|---|")
        for r in rows:
            state = ", ".join(r["vulnerabilities"]) or "none" if r["checked"] else "not checked (not the latest)"
            print(f"| {r['name']} | {r['version']} | {r['latest']} | {state} |")
    for r in found:
        print(f"VULNERABLE {r['name']} {r['version']}: {', '.join(r['vulnerabilities'])}", file=sys.stderr)
    print(f"audit: {len(rows)} distributions, {len(rows) - len(unchecked)} checked, {len(found)} with known "
          f"vulnerabilities, {len(unchecked)} not checkable from here (pinned below the latest release: "
          f"{', '.join(r['name'] for r in unchecked) or 'none'})", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
