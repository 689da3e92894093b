"""Pack FER2013 for a lent GPU machine, and unpack it there, array for array identical.

    python -m training.device.pack                          # ../shared/data/fer2013 -> .device/
    python -m training.device.pack --parts 6                # images in 6 WebP files (staged calls)
    python -m training.device.pack --unpack .device --to /tmp/fer.npz   # rebuild (exit 1 on any difference)
    python -m training.device.pack --status .device         # which parts are there, which are missing
    python -m training.device.pack --measure --carry .device          # bytes that would travel

The carry folder (git-ignored: /.device/ in .git/info/exclude) holds
  images-NN.webp   the (N,48,48) uint8 images as lossless WebP mosaics (128 faces a row)
  arrays.npz       every other array of the data npz (labels, usage, index, exact)
  <votes file>     the FER+ votes npz, byte for byte (its sha256 is what train.py records)
  pack.json        the sha256 of the original npz and of every array (and of every file
                   here), and the zip layout of the original, so that --unpack can write
                   the npz again byte for byte where zlib deflates as it did here

--unpack checks every file's sha256, decodes, checks every array's sha256 against
pack.json and writes the npz with the original's member order, names, dates and
attributes.  A differing array is an error (exit 1, nothing written).  A file whose
bytes differ although every array is identical (another zlib) is said aloud: the
manifests of runs trained on it then record that file's data_sha256.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "fer2013"
DEFAULT_DATA = SHARED / "fer2013_train_val.npz"
DEFAULT_VOTES = SHARED / "ferplus_votes_train_val.npz"
GRID = 128            # faces per mosaic row: 6,144 px wide (WebP allows 16,383 a side)
FACE = 48
LIMIT_BYTES = 64 << 20  # what may travel to the device machine


def sha256_bytes(data) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_sha(a: np.ndarray) -> str:
    return sha256_bytes(np.ascontiguousarray(a).tobytes())


def read_members(path: Path) -> list[tuple[zipfile.ZipInfo, bytes, np.ndarray]]:
    """Each member of the npz: its ZipInfo, its .npy header bytes and its array."""
    out = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as fh:
                raw = fh.read()
            array = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
            if array.dtype.hasobject or (array.ndim > 1 and not array.flags.c_contiguous):
                sys.exit(f"{path}:{info.filename}: Fortran-ordered or object arrays are not supported")
            offset = len(raw) - array.nbytes  # the data follows the header to the member's end
            out.append((info, raw[:offset], array))
    return out


# ---- pack --------------------------------------------------------------------------------

def mosaic(images: np.ndarray) -> np.ndarray:
    n = len(images)
    rows = -(-n // GRID)
    padded = np.zeros((rows * GRID, FACE, FACE), np.uint8)
    padded[:n] = images
    return padded.reshape(rows, GRID, FACE, FACE).transpose(0, 2, 1, 3).reshape(rows * FACE, GRID * FACE)


def unmosaic(picture: np.ndarray, n: int) -> np.ndarray:
    rows = picture.shape[0] // FACE
    return picture.reshape(rows, FACE, GRID, FACE).transpose(0, 2, 1, 3).reshape(rows * GRID, FACE, FACE)[:n]


def encode_webp(picture: np.ndarray) -> bytes:
    import cv2
    ok, buf = cv2.imencode(".webp", picture, [cv2.IMWRITE_WEBP_QUALITY, 101])  # above 100: lossless
    if not ok:
        sys.exit("cv2 could not encode the WebP mosaic")
    return buf.tobytes()


def decode_webp(data: bytes) -> np.ndarray:
    import cv2
    picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if picture is None:
        raise ValueError("cv2 could not decode the WebP mosaic")
    if picture.ndim == 3:  # a decoder that returns BGR for a grey picture: the channels are equal
        if not (np.array_equal(picture[..., 0], picture[..., 1]) and np.array_equal(picture[..., 0], picture[..., 2])):
            raise ValueError("the WebP mosaic decoded to unequal colour channels")
        picture = picture[..., 0]
    return np.ascontiguousarray(picture)


def pack(data: Path, votes: Path | None, out: Path, parts: int) -> dict:
    members = read_members(data)
    names = [info.filename for info, _, _ in members]
    if "images.npy" not in names:
        sys.exit(f"{data} has no images array")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("images-*.webp"):
        old.unlink()
    meta = {"format": "training.device.pack 1", "data": {"name": data.name, "bytes": data.stat().st_size,
                                                         "sha256": sha256_file(data)},
            "members": [], "images": [], "files": {}}
    others = {}
    for info, header, array in members:
        meta["members"].append({
            "name": info.filename, "array": info.filename.removesuffix(".npy"),
            "dtype": array.dtype.str, "shape": list(array.shape), "sha256": array_sha(array),
            "npy_header": header.hex(),
            "zip": {"date_time": list(info.date_time), "compress_type": info.compress_type,
                    "create_system": info.create_system, "create_version": info.create_version,
                    "extract_version": info.extract_version, "external_attr": info.external_attr,
                    "flag_bits": info.flag_bits, "comment": info.comment.hex(), "extra": info.extra.hex()},
        })
        if info.filename != "images.npy":
            others[info.filename.removesuffix(".npy")] = array
    images = dict((i.filename, a) for i, _, a in members)["images.npy"]
    if images.dtype != np.uint8 or images.shape[1:] != (FACE, FACE):
        sys.exit(f"images are {images.dtype} {images.shape}, not (N,48,48) uint8")
    bounds = np.linspace(0, len(images), parts + 1).round().astype(int)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        name = f"images-{k:02d}.webp"
        blob = encode_webp(mosaic(images[a:b]))
        if not np.array_equal(unmosaic(decode_webp(blob), b - a), images[a:b]):
            sys.exit(f"{name}: the WebP round trip is not lossless here")
        (out / name).write_bytes(blob)
        meta["images"].append({"file": name, "first": int(a), "count": int(b - a)})
        print(f"{name}: rows {a}..{b - 1}, {len(blob):,} bytes", flush=True)
    np.savez_compressed(out / "arrays.npz", **others)
    if votes:
        shutil.copyfile(votes, out / votes.name)
        meta["votes"] = {"file": votes.name, "sha256": sha256_file(out / votes.name)}
    for f in sorted(out.iterdir()):
        if f.name != "pack.json" and f.is_file():
            meta["files"][f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    (out / "pack.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


# ---- unpack ------------------------------------------------------------------------------

def status(src: Path) -> list[str]:
    """Names of pack.json's files that are missing or whose sha256 differs."""
    meta = json.loads((src / "pack.json").read_text())
    bad = []
    for name, f in meta["files"].items():
        p = src / name
        if not p.exists():
            bad.append(f"{name} (missing)")
        elif p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            bad.append(f"{name} (other bytes)")
    return bad


def unpack(src: Path, to: Path, votes_to: Path | None) -> bool:
    """Rebuild the npz at ``to``; exit 1 if any array differs.  True if byte-identical."""
    if not (src / "pack.json").exists():
        sys.exit(f"{src}/pack.json is missing: pack first (python -m training.device.pack), and carry that folder")
    meta = json.loads((src / "pack.json").read_text())
    bad = status(src)
    if bad:
        sys.exit(f"{src}: parts missing or damaged: {', '.join(bad)}; "
                 "send them (carry) and run again")
    n = next(m for m in meta["members"] if m["name"] == "images.npy")["shape"][0]
    images = np.empty((n, FACE, FACE), np.uint8)
    for part in meta["images"]:
        tiles = unmosaic(decode_webp((src / part["file"]).read_bytes()), part["count"])
        images[part["first"]:part["first"] + part["count"]] = tiles
    with np.load(src / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = images
    differ = []
    for m in meta["members"]:
        a = arrays.get(m["array"])
        if a is None:
            differ.append(f"{m['array']} (missing)")
        elif a.dtype.str != m["dtype"] or list(a.shape) != m["shape"] or array_sha(a) != m["sha256"]:
            differ.append(f"{m['array']} ({a.dtype} {a.shape}, sha256 {array_sha(a)[:12]}, "
                          f"want {m['dtype']} {m['shape']} {m['sha256'][:12]})")
    if differ:
        sys.exit("NOT IDENTICAL, nothing written: " + "; ".join(differ))
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(to.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for m in meta["members"]:
            z = m["zip"]
            info = zipfile.ZipInfo(m["name"], date_time=tuple(z["date_time"]))
            info.compress_type = z["compress_type"]
            info.create_system, info.create_version = z["create_system"], z["create_version"]
            info.extract_version, info.external_attr = z["extract_version"], z["external_attr"]
            info.comment = bytes.fromhex(z["comment"])
            with zf.open(info, "w", force_zip64=True) as fh:
                fh.write(bytes.fromhex(m["npy_header"]))
                fh.write(np.ascontiguousarray(arrays[m["array"]]).tobytes())
    tmp.replace(to)
    # the check of what was written, read back the way training reads it
    with np.load(to) as z:
        for m in meta["members"]:
            if array_sha(z[m["array"]]) != m["sha256"]:
                to.unlink()
                sys.exit(f"NOT IDENTICAL after writing: {m['array']} read back from {to} differs")
    same_file = sha256_file(to) == meta["data"]["sha256"]
    print(f"{to}: every array identical ({', '.join(m['array'] for m in meta['members'])}); file "
          + ("byte-identical to " if same_file else "bytes DIFFER from ")
          + f"{meta['data']['name']} (sha256 {meta['data']['sha256'][:12]})", flush=True)
    if "votes" in meta and votes_to:
        shutil.copyfile(src / meta["votes"]["file"], votes_to)
        print(f"{votes_to}: votes, sha256 {sha256_file(votes_to)[:12]} (checked)", flush=True)
    return same_file


# ---- measure -----------------------------------------------------------------------------

def travelling_bytes(carry: list[Path]) -> dict:
    """Bytes the device tool would send: tracked and untracked-not-ignored files (as they
    are in the working tree), shared/ inside the checkout, and the carried paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    files = {ROOT / p.decode() for p in listed if p}
    for extra in [ROOT / "shared", *[ROOT / c for c in carry]]:
        if extra.is_dir():
            files.update(p for p in extra.rglob("*") if p.is_file() or p.is_symlink())
        elif extra.exists():
            files.add(extra)
    sizes = {p: p.lstat().st_size for p in files if p.exists() or p.is_symlink()}
    carried = sum(s for p, s in sizes.items() if any(p == ROOT / c or (ROOT / c) in p.parents for c in carry))
    total = sum(sizes.values())
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    return {"total": total, "carried": carried, "rest": total - carried, "limit": LIMIT_BYTES,
            "headroom": LIMIT_BYTES - total,
            "biggest": [(str(p.relative_to(ROOT)), s) for p, s in biggest]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--votes", type=Path, default=DEFAULT_VOTES, help="FER+ votes npz ('' for none)")
    p.add_argument("--out", type=Path, default=ROOT / ".device")
    p.add_argument("--parts", type=int, default=6,
                   help="images in this many WebP files (default 6: ~8.3 MiB each, for staged calls too)")
    p.add_argument("--unpack", type=Path, metavar="DIR", help="rebuild the npz from this carry folder")
    p.add_argument("--to", type=Path, default=Path("/tmp/fer.npz"), help="--unpack: the npz to write")
    p.add_argument("--votes-to", type=Path, help="--unpack: where the votes file goes (default: beside --to)")
    p.add_argument("--strict", action="store_true", help="--unpack: exit 2 unless the npz is byte-identical too")
    p.add_argument("--status", type=Path, metavar="DIR", help="list the parts missing from DIR (exit 1 if any)")
    p.add_argument("--measure", action="store_true", help="bytes that would travel to the device machine")
    p.add_argument("--carry", type=Path, action="append", default=[], help="--measure: a carried path (repeat)")
    args = p.parse_args(argv)

    if args.measure:
        m = travelling_bytes(args.carry)
        mib = lambda b: f"{b / (1 << 20):.2f} MiB"  # noqa: E731
        print(f"would travel: {mib(m['total'])} ({m['total']:,} bytes) of {mib(m['limit'])}: "
              f"carried {mib(m['carried'])}, the rest {mib(m['rest'])}; headroom {mib(m['headroom'])}")
        for name, size in m["biggest"]:
            print(f"  {mib(size):>11}  {name}")
        return 0 if m["headroom"] >= 0 else 1
    if args.status:
        bad = status(args.status)
        meta = json.loads((args.status / "pack.json").read_text())
        print(f"{args.status}: {len(meta['files']) - len(bad)} of {len(meta['files'])} files present and intact"
              + (f"; missing or damaged: {', '.join(bad)}" if bad else ""))
        return 1 if bad else 0
    if args.unpack:
        votes_to = args.votes_to
        if votes_to is None:
            meta = json.loads((args.unpack / "pack.json").read_text()) if (args.unpack / "pack.json").exists() else {}
            votes_to = args.to.parent / meta["votes"]["file"] if "votes" in meta else None
        same = unpack(args.unpack, args.to, votes_to)
        return 2 if args.strict and not same else 0
    votes = args.votes if str(args.votes) not in ("", ".") else None
    meta = pack(args.data, votes, args.out, max(1, args.parts))
    total = sum(f["bytes"] for f in meta["files"].values()) + (args.out / "pack.json").stat().st_size
    print(f"{args.out}: {total / (1 << 20):.2f} MiB ({total:,} bytes) in {len(meta['files']) + 1} files; "
          f"original {meta['data']['name']} {meta['data']['bytes'] / (1 << 20):.2f} MiB, "
          f"sha256 {meta['data']['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
