"""Hostile API Gateway events through the API handler, in-process (issue #22, section 1).

    python -m local.fuzz --n 10000 --seed 1 [--json] [--case I] [--kind KIND]

A seeded generator (random.Random; case ``i`` of seed ``s`` is always the same event,
``--case i`` replays it alone) makes events a client could cause, in both payload
versions (HTTP API 2.0 and REST API 1.0): random bytes; truncated and byte-mutated
JPEG/PNG/WebP/BMP (the sample photos in events/images/ and PIL-made pictures); GIF,
TIFF, SVG, PDF; decompression bombs; 1x1 pictures; odd modes (CMYK, 16-bit, palette
with transparency, RGBA, LA); animations; every EXIF orientation; malformed base64,
JSON, urlencoded and multipart bodies; odd Content-Type, Accept and annotate values;
events whose fields are missing, null or of the wrong type.  Every answer must be a
200 (JSON that validates against the contract's Analysis schema, the annotated JPEG,
or a page) or a 4xx whose body validates against the Error schema; a 5xx, an
exception escaping the handler or a request slower than ``SLOW_S`` is a bad answer.
Exits 1 on any bad answer.  Rekognition is never called (FALLBACK_MODE=off)."""
from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import io
import json
import os
import random
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, quote

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "events" / "images"
CONTRACT = ROOT / "function" / "web" / "openapi.yaml"
SLOW_S = 3.0
PAGES = ("/", "/openapi.json")


@dataclass
class Case:
    index: int
    kind: str
    version: str           # "2.0" or "1.0"
    event: object          # usually a dict; odd_event sends anything
    expect_jpeg: bool | None = None   # None: the generator does not know


@dataclass
class Req:
    """A request before it becomes an event of either payload version."""

    body: bytes = b""
    headers: dict = field(default_factory=dict)
    query: str = ""
    method: str = "POST"
    path: str = "/emotion"
    expect_jpeg: bool | None = False


# ---------------------------------------------------------------- the corpus

def _save(img, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, depth: int = 8, colour: int = 2, idat: bytes | None = None) -> bytes:
    """A PNG whose IHDR says width x height, with a tiny (zlib of a few rows) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    data = idat if idat is not None else zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def bmp_claiming(width: int, height: int, bpp: int = 24, payload: bytes = b"\x00" * 64) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 0, len(payload), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header) + len(payload), 0, 0, 14 + len(header)) + header + payload


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its SOF0 marker's size changed (the scan data left as it is)."""
    at = jpeg.find(b"\xff\xc0")
    if at < 0:
        return jpeg
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def webp_claiming(webp: bytes, width: int, height: int) -> bytes:
    """A VP8X WebP whose canvas is width x height around ``webp``'s VP8/VP8L chunk."""
    inner = webp[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + \
        (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + inner
    return b"RIFF" + struct.pack("<I", len(body)) + body


class Corpus:
    """The pictures the generators start from, made once per process (deterministic)."""

    def __init__(self):
        from PIL import Image, ImageDraw

        self.samples = {p.name: p.read_bytes() for p in sorted(IMAGES.glob("*")) if p.suffix in (".jpg", ".png")}
        astronaut = Image.open(IMAGES / "astronaut.jpg").convert("RGB")
        face = astronaut.crop((160, 30, 290, 190)).resize((96, 112))   # her face, small
        small = astronaut.resize((160, 160))
        self.base = {"face": face, "small": small}
        # A face-ish drawing too: PIL-made, no photo.
        drawn = Image.new("RGB", (120, 120), (200, 170, 150))
        pen = ImageDraw.Draw(drawn)
        pen.ellipse((20, 10, 100, 110), fill=(230, 190, 170))
        pen.ellipse((40, 40, 52, 50), fill=(30, 30, 30))
        pen.ellipse((68, 40, 80, 50), fill=(30, 30, 30))
        pen.arc((45, 70, 75, 90), 0, 180, fill=(120, 30, 30), width=3)
        self.base["drawn"] = drawn

        self.valid: dict[str, bytes] = {}   # name -> bytes of a picture the service should analyse
        for name, img in self.base.items():
            self.valid[f"{name}.jpg"] = _save(img, "JPEG", quality=85)
            self.valid[f"{name}.png"] = _save(img, "PNG")
            self.valid[f"{name}.webp"] = _save(img, "WEBP", quality=80)
            self.valid[f"{name}.bmp"] = _save(img, "BMP")
        self.valid.update(self.samples)

        self.modes: dict[str, bytes] = {
            "cmyk.jpg": _save(face.convert("CMYK"), "JPEG"),
            "grey.jpg": _save(face.convert("L"), "JPEG"),
            "progressive.jpg": _save(face, "JPEG", progressive=True),
            "i16.png": _save(Image.fromarray(_i16(face)), "PNG"),
            "palette-transparent.png": _save(face.convert("P", palette=Image.Palette.ADAPTIVE), "PNG",
                                             transparency=0),
            "rgba.png": _save(face.convert("RGBA"), "PNG"),
            "la.png": _save(face.convert("LA"), "PNG"),
            "1bit.png": _save(face.convert("1"), "PNG"),
            "hsv-as-jpeg.jpg": _save(face.convert("YCbCr"), "JPEG"),
            "rgba.webp": _save(face.convert("RGBA"), "WEBP"),
            "lossless.webp": _save(face, "WEBP", lossless=True),
            "1bit.bmp": _save(face.convert("1"), "BMP"),
            "palette.bmp": _save(face.convert("P"), "BMP"),
            "grey.bmp": _save(face.convert("L"), "BMP"),
            "interlaced.png": png_interlaced(face),
        }
        frames = [face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), small.resize(face.size)]
        self.animated = {
            "animated.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
            "animated.webp": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50),
            "animated.png": _save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50),
        }
        self.tiny = {}
        for size in ((1, 1), (1, 2), (2, 1), (2, 2), (3, 3)):
            img = Image.new("RGB", size, (200, 150, 120))
            for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp")):
                self.tiny[f"{size[0]}x{size[1]}.{ext}"] = _save(img, fmt)
        self.exif = {}
        for orientation in (1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 65535):
            exif = Image.Exif()
            exif[0x0112] = orientation
            self.exif[orientation] = _save(face, "JPEG", exif=exif.tobytes())
        self.exif_png = _save(face, "PNG", exif=self.exif_block(6))
        self.exif_webp = _save(face, "WEBP", exif=self.exif_block(8))
        self.shapes = {}
        for size in ((2000, 1), (1, 2000), (64, 24), (24, 64), (500, 32), (16, 16), (4000, 3), (3, 4000),
                     (1, 40000), (40000, 1), (300, 40), (40, 300)):
            img = Image.new("L", size, 128)
            self.shapes[f"{size[0]}x{size[1]}.png"] = _save(img, "PNG")
        self.other = {
            "gif": _save(face, "GIF"),
            "tiff": _save(face, "TIFF"),
            "tiff-float": _save(face.convert("F"), "TIFF"),
            "ico": _save(face, "ICO"),
            "pdf": _save(face, "PDF"),
            "ppm": _save(face, "PPM"),
            "tga": _save(face, "TGA"),
            "pcx": _save(face, "PCX"),
            "jpeg2000": _jpeg2000(face),
            "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
                   b'<circle cx="50" cy="50" r="40" fill="red"/></svg>',
            "svg-bomb": b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 '
                        b'"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><svg>&lol2;</svg>',
            "pdf-text": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
            "html": b"<html><body><img src=x onerror=alert(1)></body></html>",
            "zip": b"PK\x03\x04" + b"\x00" * 40,
            "gzip": zlib.compress(b"\x00" * 10000),
            "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
            "avif": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64,
            "psd": b"8BPS\x00\x01" + b"\x00" * 64,
        }
        jpeg = self.valid["face.jpg"]
        webp = self.valid["face.webp"]
        self.bombs = {
            "png-60000x60000": png_claiming(60000, 60000),
            "png-40001x1000": png_claiming(40001, 1000),
            "png-6000x6000-truncated": png_claiming(6000, 6000),
            "png-1x40000000": png_claiming(1, 40_000_000),
            "png-2^31": png_claiming(2**31 - 1, 2**31 - 1),
            "png-0x0": png_claiming(0, 0),
            "png-16bit-20000": png_claiming(20000, 20000, depth=16),
            "png-bad-depth": png_claiming(64, 64, depth=7),
            "png-bad-colour": png_claiming(64, 64, colour=5),
            "png-zlib-bomb": png_claiming(4000, 4000, colour=0, idat=zlib.compress(b"\x00" * 4001 * 4000, 9)),
            "bmp-50000": bmp_claiming(50000, 50000),
            "bmp-5000-truncated": bmp_claiming(5000, 5000),
            "bmp-negative": bmp_claiming(-64, -64),
            "bmp-zero": bmp_claiming(0, 10),
            "bmp-bpp-7": bmp_claiming(64, 64, bpp=7),
            "jpeg-65500": jpeg_claiming(jpeg, 65500, 65500),
            "jpeg-8000x5000": jpeg_claiming(jpeg, 8000, 5000),
            "jpeg-0": jpeg_claiming(jpeg, 0, 0),
            "webp-16384": webp_claiming(webp, 16384, 16384),
            "webp-7000": webp_claiming(webp, 7000, 5000),
            "gif-65535": b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00;",
        }
        # Legit, highly compressible big pictures (a few MB at most).
        self.big = {
            "grey-6000x6000.png": _save(Image.new("L", (6000, 6000), 128), "PNG", optimize=False),
            "rgb-5000x4000.png": _save(Image.new("RGB", (5000, 4000), (90, 120, 150)), "PNG"),
            "flat-8000x5000.jpg": _save(Image.new("RGB", (8000, 5000), (180, 160, 140)), "JPEG", quality=50),
            "face-4000x4000.jpg": _save(face.resize((4000, 4000)), "JPEG", quality=30),
            "rgb-3000x3000.webp": _save(Image.new("RGB", (3000, 3000), (10, 200, 30)), "WEBP", quality=10),
        }

    @staticmethod
    def exif_block(orientation: int) -> bytes:
        from PIL import Image
        exif = Image.Exif()
        exif[0x0112] = orientation
        return exif.tobytes()

    def any_image(self, rng: random.Random) -> bytes:
        pool = rng.choice([self.valid, self.valid, self.modes, self.tiny, self.animated])
        return pool[rng.choice(sorted(pool))]


def _i16(img):
    import numpy as np
    return (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)


def png_interlaced(img) -> bytes:
    """Pillow cannot write Adam7; a hand-written interlaced header over normal data is
    a malformed but plausible PNG."""
    data = _save(img, "PNG")
    at = data.find(b"IHDR")
    ihdr = bytearray(data[at + 4:at + 17])
    ihdr[12] = 1
    return data[:at - 4] + _chunk(b"IHDR", bytes(ihdr)) + data[at + 21:]


def _jpeg2000(img) -> bytes:
    try:
        return _save(img, "JPEG2000")
    except (OSError, KeyError):
        return b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64


@lru_cache(maxsize=1)
def corpus() -> Corpus:
    return Corpus()


# ---------------------------------------------------------------- helpers

IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp", "image/bmp", "application/octet-stream", "image/gif",
               "image/jpg", "image/x-anything", "image/svg+xml"]
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def rand_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n)) if n < 256 else rng.randbytes(n)


def rand_text(rng: random.Random, n: int) -> str:
    alphabet = rng.choice([B64, "%&=+;,/\\\"'{}[]:\r\n\t \x00", "\u00e9\u4e2d\U0001f600\ufeff\u202e",
                           "".join(map(chr, range(32, 127)))])
    return "".join(rng.choice(alphabet) for _ in range(n))


def mutate(rng: random.Random, data: bytes, count: int | None = None) -> bytes:
    out = bytearray(data)
    for _ in range(count or rng.randint(1, 20)):
        if not out:
            out += rand_bytes(rng, 4)
        # the header (first 64 bytes) is where parsers get confused; bias towards it
        at = rng.randrange(min(len(out), 64)) if rng.random() < 0.5 else rng.randrange(len(out))
        op = rng.random()
        if op < 0.5:
            out[at] = rng.getrandbits(8)
        elif op < 0.65:
            out[at] ^= 1 << rng.randrange(8)
        elif op < 0.8:
            out[at:at] = rand_bytes(rng, rng.randint(1, 16))
        elif op < 0.9:
            del out[at:at + rng.randint(1, 16)]
        else:  # a magic value: a big length, zero, 0xff...
            out[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                         b"\x80\x00\x00\x00"])
    return bytes(out)


def as_body(rng: random.Random, image: bytes, expect_jpeg: bool | None = False) -> Req:
    """``image`` sent one of the ways a client may: raw, JSON, form, multipart."""
    how = rng.choice(["raw", "raw", "json", "data-url", "form", "multipart", "multipart-b64"])
    if how == "raw":
        return Req(image, {"Content-Type": rng.choice(["image/jpeg", "image/png", "application/octet-stream"])},
                   expect_jpeg=expect_jpeg)
    if how == "json":
        return Req(json.dumps({"image": b64(image)}).encode(), {"Content-Type": "application/json"},
                   expect_jpeg=expect_jpeg)
    if how == "data-url":
        return Req(json.dumps({"image": "data:image/png;base64," + b64(image)}).encode(),
                   {"Content-Type": "application/json"}, expect_jpeg=expect_jpeg)
    if how == "form":
        return Req(("image=" + quote(b64(image), safe="")).encode(),
                   {"Content-Type": "application/x-www-form-urlencoded"}, expect_jpeg=expect_jpeg)
    boundary = "----fuzz" + str(rng.getrandbits(32))
    if how == "multipart":
        body = multipart(boundary, [({"Content-Disposition": 'form-data; name="image"; filename="p.jpg"',
                                      "Content-Type": "image/jpeg"}, image)])
    else:
        body = multipart(boundary, [({"Content-Disposition": 'form-data; name="image"'}, b64(image).encode())])
    return Req(body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}, expect_jpeg=expect_jpeg)


def multipart(boundary: str, parts: list[tuple[dict | bytes, bytes]], close: bool = True, eol: bytes = b"\r\n") -> bytes:
    out = b""
    for headers, content in parts:
        out += b"--" + boundary.encode("latin-1", "replace") + eol
        if isinstance(headers, bytes):
            out += headers
        else:
            out += b"".join(f"{k}: {v}".encode("utf-8", "surrogateescape") + eol for k, v in headers.items())
        out += eol + content + eol
    if close:
        out += b"--" + boundary.encode("latin-1", "replace") + b"--" + eol
    return out


def nested(depth: int, opener: str = "[", closer: str = "]", core: str = "") -> str:
    return opener * depth + core + closer * depth


# ---------------------------------------------------------------- the generators: rng -> Req (or an event)

def g_random_bytes(rng, c):
    body = rand_bytes(rng, rng.choice([0, 1, 2, 3, 8, 16, 100, 1000, 4096]))
    head = rng.choice([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"{",
                       b"image=", b"GIF8"])
    headers = {} if rng.random() < 0.3 else {"Content-Type": rng.choice(IMAGE_TYPES)}
    return Req(head + body, headers)


def g_truncated(rng, c):
    image = c.valid[rng.choice(sorted(c.valid))] if rng.random() < 0.7 else c.any_image(rng)
    cut = rng.choice([1, 2, 4, 8, 16, 32, 64, 100, rng.randrange(1, len(image)), len(image) - 1, len(image) // 2])
    return as_body(rng, image[:max(1, min(cut, len(image) - 1))])


def g_mutated(rng, c):
    image = c.valid[rng.choice(sorted(c.valid))] if rng.random() < 0.7 else c.any_image(rng)
    return as_body(rng, mutate(rng, image), expect_jpeg=None)


def g_other_format(rng, c):
    name = rng.choice(sorted(c.other))
    data = c.other[name]
    if rng.random() < 0.3:
        data = mutate(rng, data, 3)
    ctype = rng.choice(["image/jpeg", "image/png", "image/gif", "image/tiff", "image/svg+xml", "application/pdf",
                        "application/octet-stream", None])
    if ctype is None or rng.random() < 0.3:
        return as_body(rng, data)
    return Req(data, {"Content-Type": ctype})


def g_bomb(rng, c):
    data = c.bombs[rng.choice(sorted(c.bombs))]
    return as_body(rng, data)


def g_big(rng, c):
    data = c.big[rng.choice(sorted(c.big))]
    req = as_body(rng, data) if len(data) < 3_000_000 else Req(data, {"Content-Type": "image/png"})
    return req


def annotated_sometimes(rng, req, rate: float, query: str = "annotate=1", expect_jpeg: bool | None = True):
    """``req`` asking for the annotated photo ``rate`` of the time."""
    if rng.random() < rate:
        req.query, req.expect_jpeg = query, expect_jpeg
    return req


def g_tiny(rng, c):
    return annotated_sometimes(rng, as_body(rng, c.tiny[rng.choice(sorted(c.tiny))]), 0.3)


def g_odd_mode(rng, c):
    # expect_jpeg None: an unreadable picture answers 4xx JSON
    return annotated_sometimes(rng, as_body(rng, c.modes[rng.choice(sorted(c.modes))], expect_jpeg=None), 0.3,
                               "annotate=true", None)


def g_animated(rng, c):
    return annotated_sometimes(rng, as_body(rng, c.animated[rng.choice(sorted(c.animated))], expect_jpeg=None),
                               0.3, expect_jpeg=None)


def g_exif(rng, c):
    pick = rng.random()
    if pick < 0.8:
        data = c.exif[rng.choice(sorted(c.exif))]
    elif pick < 0.9:
        data = c.exif_png
    else:
        data = c.exif_webp
    if rng.random() < 0.2:  # a broken EXIF block
        at = data.find(b"Exif")
        if at > 0:
            data = data[:at] + mutate(rng, data[at:at + 40], 4) + data[at + 40:]
    return annotated_sometimes(rng, as_body(rng, data, expect_jpeg=None), 0.3, expect_jpeg=None)


def g_odd_shape(rng, c):
    return annotated_sometimes(rng, as_body(rng, c.shapes[rng.choice(sorted(c.shapes))]), 0.4)


def g_sample(rng, c):
    data = c.valid[rng.choice(sorted(c.valid))]
    req = as_body(rng, data)
    pick = rng.random()
    if pick < 0.2:
        req.query, req.expect_jpeg = rng.choice(["annotate=1", "annotate=true", "annotate=TRUE"]), True
    elif pick < 0.3:
        req.headers["Accept"], req.expect_jpeg = "image/jpeg", True
    elif pick < 0.4:
        req.query, req.expect_jpeg = "annotate=0", False
        req.headers["Accept"] = "image/*"
    return req


def g_bad_base64(rng, c):
    image = c.valid["face.jpg"]
    good = b64(image)
    variants = [
        lambda: good[:-1],                                # wrong length
        lambda: good + "=",                                # extra padding
        lambda: good + "===",
        lambda: "=" + good,
        lambda: good[:50] + "!!!" + good[50:],             # bad characters
        lambda: good[:50] + "\u00e9\u4e2d" + good[50:],    # non-ASCII
        lambda: good[:50] + "\x00" + good[50:],
        lambda: "data:image/jpeg;base64" + good,           # a data URL without its comma
        lambda: "data:",
        lambda: "data:,",
        lambda: "data:image/png;base64,",
        lambda: "data:" + "," * 1000,
        lambda: "",
        lambda: " \r\n\t ",
        lambda: "====",
        lambda: "A",
        lambda: "AB",
        lambda: "A" * rng.choice([1000, 100_000, 4_000_000]),   # a huge string
        lambda: rand_text(rng, rng.choice([10, 1000, 50_000])),
        lambda: b64(rand_bytes(rng, 300)),                # valid base64 of garbage
        lambda: good.replace("+", "-").replace("/", "_").rstrip("="),   # URL-safe, unpadded
        lambda: "\n".join(good[i:i + 76] for i in range(0, len(good), 76)),   # MIME lines
        lambda: good.replace("A", " "),
        lambda: "\ud800" + good,                           # a lone surrogate
    ]
    text = rng.choice(variants)()
    how = rng.choice(["json", "form", "multipart"])
    if how == "json":
        body = json.dumps({"image": text}).encode()
        return Req(body, {"Content-Type": "application/json"})
    if how == "form":
        return Req(("image=" + quote(text.encode("utf-8", "surrogatepass"), safe="")).encode(),
                   {"Content-Type": "application/x-www-form-urlencoded"})
    boundary = "b" + str(rng.getrandbits(20))
    body = multipart(boundary, [({"Content-Disposition": 'form-data; name="image"'},
                                 text.encode("utf-8", "surrogatepass"))])
    return Req(body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def g_bad_json(rng, c):
    good = b64(c.valid["face.jpg"])
    depth = rng.choice([100, 1000, 10_000, 100_000])
    variants = [
        lambda: b"{",
        lambda: b"{\"image\": ",
        lambda: b"{\"image\": \"" + good.encode(),
        lambda: b"{'image': 'abc'}",
        lambda: b"[]",
        lambda: b"[{\"image\": \"" + good.encode() + b"\"}]",
        lambda: b"42",
        lambda: b"-1e999",
        lambda: b"1" * 5000,
        lambda: b"null",
        lambda: b"true",
        lambda: b"\"" + good.encode() + b"\"",
        lambda: b"NaN",
        lambda: json.dumps({"image": rng.choice([1, 1.5, -1, True, None, [], [good], {}, {"data": good},
                                                 2**100])}).encode(),
        lambda: json.dumps({"img": good}).encode(),
        lambda: json.dumps({"IMAGE": good}).encode(),
        lambda: b"{\"image\": \"x\", \"image\": \"" + good.encode() + b"\"}",   # duplicate keys
        lambda: nested(depth).encode(),                                     # deeply nested arrays
        lambda: nested(depth, "{\"a\":", "}", "1").encode(),                # deeply nested objects
        lambda: ("{\"image\": " + nested(depth, "[", "]", "\"x\"") + "}").encode(),
        lambda: ("{\"x\": " + nested(depth) + ", \"image\": \"" + good + "\"}").encode(),
        lambda: json.dumps({"image": good, "pad": "x" * rng.choice([1_000_000, 4_000_000])}).encode(),  # very large
        lambda: json.dumps({"image": good, "list": list(range(rng.choice([10_000, 300_000])))}).encode(),
        lambda: b"\xef\xbb\xbf" + json.dumps({"image": good}).encode(),      # a BOM
        lambda: json.dumps({"image": good}).encode("utf-16"),
        lambda: b"{\"image\": \"\xff\xfe\"}",                                # invalid UTF-8
        lambda: b"{\"image\": \"\\ud800\"}",
        lambda: b"{\"image\": \"" + good.encode() + b"\"}" + b" trailing",
        lambda: b" \r\n {\"image\": \"" + good.encode() + b"\"}",
        lambda: rand_bytes(rng, 64),
        lambda: b"{" + rand_bytes(rng, 64),
    ]
    body = rng.choice(variants)()
    ctype = rng.choice(["application/json", "application/json; charset=utf-8", "application/vnd.api+json",
                        "APPLICATION/JSON", "application/json; charset=latin-1", None])
    return Req(body, {} if ctype is None else {"Content-Type": ctype})


def g_bad_form(rng, c):
    good = b64(c.valid["face.jpg"])
    variants = [
        lambda: "image=" + quote(good, safe="") + "&image=" + quote(good, safe=""),   # duplicated
        lambda: "image=abc&image=" + quote(good, safe=""),
        lambda: "image=" + good,                     # '+' not encoded: spaces
        lambda: "image=%" + quote(good, safe=""),
        lambda: "image=%zz%4" + quote(good, safe=""),
        lambda: "image=%ff%fe%00",
        lambda: "%%%%&&&===",
        lambda: "image",
        lambda: "image=",
        lambda: "=" + quote(good, safe=""),
        lambda: "Image=" + quote(good, safe=""),
        lambda: "image[]=" + quote(good, safe=""),
        lambda: "a=1&" * rng.choice([10, 10_000, 100_000]) + "image=" + quote(good, safe=""),
        lambda: "image=" + "%41" * rng.choice([10, 100_000]),
        lambda: "image=" + quote(good, safe="") + ";x=1",
        lambda: rand_text(rng, 200),
        lambda: "image=" + quote(good[:100], safe="") + "\x00" + quote(good[100:], safe=""),
    ]
    text = rng.choice(variants)()
    body = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:
        body = mutate(rng, body, 3)
    ctype = rng.choice(["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8",
                        "Application/X-WWW-Form-Urlencoded", None])
    return Req(body, {} if ctype is None else {"Content-Type": ctype})


def g_bad_multipart(rng, c):
    image = c.valid["face.jpg"]
    boundary = rng.choice(["XyZ", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "a" * 70, "b" * 200, "=?x?=",
                           "\u00e9t\u00e9", "with space", '"quoted"', "semi;colon", "", "--"])
    disp = 'form-data; name="image"; filename="a.jpg"'
    good_part = ({"Content-Disposition": disp, "Content-Type": "image/jpeg"}, image)
    ctype = f"multipart/form-data; boundary={boundary}"
    variants = [
        lambda: (multipart(boundary, [good_part]), "multipart/form-data"),                        # no boundary
        lambda: (multipart(boundary, [good_part]), "multipart/form-data; boundary=other"),        # wrong boundary
        lambda: (multipart(boundary, [good_part]), f'multipart/form-data; boundary="{boundary}"'),
        lambda: (multipart(boundary, [good_part]), "multipart/form-data; boundary="),
        lambda: (multipart(boundary, [good_part]), "multipart/form-data; boundary"),
        lambda: (multipart(boundary, []), ctype),                                                 # no parts
        lambda: (b"", ctype),
        lambda: (b"--" + boundary.encode("utf-8") + b"--\r\n", ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": 'form-data; name="other"'}, b"x")]), ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": "form-data"}, image)]), ctype),   # no name
        lambda: (multipart(boundary, [({"Content-Type": "image/jpeg"}, image)]), ctype),
        lambda: (multipart(boundary, [good_part], close=False), ctype),                          # no closing line
        lambda: (multipart(boundary, [good_part], eol=b"\n"), ctype),                            # bare LF
        lambda: (multipart(boundary, [({"Content-Disposition": disp, "X-Huge": "h" * rng.choice([1000, 200_000])},
                                       image)]), ctype),                                         # huge headers
        lambda: (multipart(boundary, [({"Content-Disposition": disp + "; " + "; ".join(
            f"p{i}=v{i}" for i in range(rng.choice([100, 5000])))}, image)]), ctype),            # many params
        lambda: (multipart(boundary, [(b"X" * 100_000 + b"\r\n", image)]), ctype),               # a huge header line
        lambda: (multipart(boundary, [({"Content-Disposition": 'form-data; name="image"',
                                        "Content-Type": "multipart/mixed; boundary=inner"},
                                       multipart("inner", [good_part]))]), ctype),               # nested
        lambda: (multipart(boundary, [({"Content-Disposition": 'form-data; name="image"; filename="x"',
                                        "Content-Type": "multipart/mixed; boundary=inner"},
                                       multipart("inner", [good_part]))]), ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": disp, "Content-Transfer-Encoding": "base64"},
                                       b64(image).encode())]), ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": disp, "Content-Transfer-Encoding": "base64"},
                                       b"!!!not base64!!!")]), ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": disp, "Content-Transfer-Encoding": "quoted-printable"},
                                       b"=FF=D8=ZZ=")]), ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": disp, "Content-Transfer-Encoding": "x-uuencode"},
                                       b"begin 644 x\n!!!\nend\n")]), ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": "form-data; name*=UTF-8''image; filename*=UTF-8''%ff"},
                                       image)]), ctype),                                         # RFC 2231
        lambda: (multipart(boundary, [({"Content-Disposition": "form-data; name*0=ima; name*1=ge; filename=\"x"},
                                       image)]), ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": 'form-data; name="image"; name="other"'}, image)]),
                 ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": "=?utf-8?q?=ff?=; name=\"image\""}, image)]), ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": 'form-data; name="image"'}, b"")]), ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": disp}, b"")]), ctype),
        lambda: (multipart(boundary, [good_part] * rng.choice([2, 50])), ctype),
        lambda: (multipart(boundary, [({"Content-Disposition": disp, "Content-Type": "text/plain; charset=bogus"},
                                       image)]), ctype),
        lambda: (mutate(rng, multipart(boundary, [good_part]), 5), ctype),
        lambda: (multipart(boundary, [good_part]), ctype + "\r\nContent-Type: text/plain"),       # header injection
        lambda: (multipart(boundary, [good_part]), ctype + "; boundary=second"),
        lambda: (rand_bytes(rng, 500), ctype),
    ]
    body, content_type = rng.choice(variants)()
    return Req(body, {"Content-Type": content_type}, expect_jpeg=None)


def g_content_type(rng, c):
    image = c.valid[rng.choice(["face.jpg", "face.png", "small.webp", "drawn.bmp"])]
    variants = [
        {},
        {"Content-Type": ""},
        {"Content-Type": "IMAGE/JPEG"},
        {"CONTENT-TYPE": "image/png"},
        {"Content-Type": "image/jpeg", "content-type": "application/json"},   # duplicated, mixed case
        {"content-type": "image/jpeg", "Content-Type": "text/plain"},
        {"Content-Type": "image/jpeg, application/json"},
        {"Content-Type": "image/jpeg; charset=\u00e9\u4e2d"},
        {"Content-Type": ";;;"},
        {"Content-Type": "image/"},
        {"Content-Type": "/"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/xml"},
        {"Content-Type": "application/json"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data"},
        {"Content-Type": "multipart/mixed; boundary=x"},
        {"Content-Type": "image/jpeg\r\nX-Injected: 1"},
        {"Content-Type": "x" * 10_000},
        {"Content-Type": "image/jpeg; " + "a=b; " * 1000},
        {"Content-Type": None},
        {"Content-Type": 123},
        {"Content-Type": ["image/jpeg"]},
        {"Content-Type": "\x00image/jpeg"},
    ]
    return Req(image, dict(rng.choice(variants)), expect_jpeg=None)


def g_accept_annotate(rng, c):
    image = c.valid[rng.choice(["face.jpg", "drawn.png", "small.webp"])]
    req = as_body(rng, image, expect_jpeg=None)
    accept = rng.choice([None, "", "*/*", "image/jpeg", "image/*", "IMAGE/JPEG", "image/jpeg;q=0",
                         "image/jpeg;q=nan", "image/jpeg;q=inf", "image/jpeg;q=-1", "image/jpeg;q=1e309",
                         "image/jpeg;q=abc;q=0.5", "application/json;q=0.1, image/jpeg;q=0.9",
                         "image/jpeg, application/json", ";;;,,,", "text/html", "image/png",
                         ",".join(["image/jpeg;q=0.5"] * 2000), "\u00e9", "image/jpeg;q=" + "9" * 5000])
    query = rng.choice(["", "annotate=1", "annotate=0", "annotate=true", "annotate=false", "annotate=",
                        "annotate=2", "annotate=yes", "annotate=%00", "annotate=%ff", "annotate=1&annotate=0",
                        "annotate=0&annotate=1", "annotate", "ANNOTATE=1", "annotate=" + "x" * 5000,
                        "annotate=tru%C3%A9", "a=%zz&annotate=1", "&&&=", "annotate=%E2%80%AE1"])
    if accept is not None:
        req.headers["Accept"] = accept
    req.query = query
    return req


ODD_VALUES = [None, 0, -1, 1, 1.5, float("nan"), True, False, "", "x", "2.0", [], [1, "a"], {}, {"a": None},
              2**70, "\u00e9", "/emotion", {"method": "POST"}, [[[]]], b"bytes"]


def g_odd_event(rng, c, version):
    """A valid event with fields missing, null or of the wrong type; or no event at all."""
    if rng.random() < 0.05:
        return rng.choice([None, [], "", "event", 0, 1.5, True, [{"version": "2.0"}], b"{}"])
    req = as_body(rng, c.valid["face.jpg"])
    event = make_event(req, version)
    targets = ["headers", "body", "isBase64Encoded", "requestContext", "rawPath", "path", "httpMethod",
               "version", "queryStringParameters", "rawQueryString", "resource", "multiValueHeaders",
               "requestContext.http", "requestContext.stage", "requestContext.http.method",
               "requestContext.http.path", "headers.content-type", "headers.Content-Type", "headers.accept"]
    for _ in range(rng.randint(1, 3)):
        target = rng.choice(targets)
        action = rng.random()
        value = rng.choice(ODD_VALUES)
        if target == "httpMethod" and action < 0.3:
            value = rng.choice(["post", "Post", "get", "PoSt", "DELETE", "CONNECT", " POST", "POST\x00"])
        _set(event, target, value, delete=action > 0.8)
    return event


def _set(event: dict, target: str, value, delete: bool) -> None:
    keys = target.split(".")
    node = event
    for key in keys[:-1]:
        if not isinstance(node, dict):
            return
        nxt = node.get(key)
        if key == "headers" and isinstance(nxt, dict):
            keys[-1] = next((k for k in nxt if k.lower() == keys[-1].lower()), keys[-1])
        node = nxt
    if isinstance(node, dict):
        if delete:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value


def g_route(rng, c):
    method = rng.choice(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "get", "post", ""])
    path = rng.choice(["/", "/emotion", "/main", "/openapi.json", "/emotion/", "//emotion", "/EMOTION", "/emotion/x",
                       "/prod/emotion", "/$default/emotion", "/../emotion", "/emotion%00", "/\u00e9", "", "x",
                       "/" + "a" * 5000, "/openapi.json/", "/index.html", "/emotion?annotate=1"])
    req = as_body(rng, c.valid["face.jpg"]) if rng.random() < 0.7 else Req(b"")
    req.method, req.path, req.expect_jpeg = method, path, None
    return req


GENERATORS = {   # kind -> (weight, generator)
    "random_bytes": (6, g_random_bytes),
    "truncated": (7, g_truncated),
    "mutated": (10, g_mutated),
    "other_format": (4, g_other_format),
    "bomb": (5, g_bomb),
    "big": (1, g_big),
    "tiny": (3, g_tiny),
    "odd_mode": (5, g_odd_mode),
    "animated": (3, g_animated),
    "exif": (4, g_exif),
    "odd_shape": (3, g_odd_shape),
    "sample": (5, g_sample),
    "bad_base64": (7, g_bad_base64),
    "bad_json": (7, g_bad_json),
    "bad_form": (5, g_bad_form),
    "bad_multipart": (8, g_bad_multipart),
    "content_type": (5, g_content_type),
    "accept_annotate": (5, g_accept_annotate),
    "odd_event": (10, g_odd_event),
    "route": (4, g_route),
}
KINDS = tuple(GENERATORS)
VERSIONS = ("2.0", "1.0")


def make_event(req: Req, version: str) -> dict:
    from local.events import http_api_event, rest_api_event

    headers = {k: v for k, v in req.headers.items()}
    # events.py lower-cases and reads header values as strings; odd values are put back after.
    plain = {k: v for k, v in headers.items() if isinstance(v, str)}
    if version == "2.0":
        event = http_api_event(req.method or "GET", req.path, plain, req.body, req.query)
        event["requestContext"]["http"]["method"] = req.method
        event["headers"] = {k.lower(): v for k, v in headers.items()} if len({k.lower() for k in headers}) == \
            len(headers) else headers
    else:
        event = rest_api_event(req.method or "GET", req.path, plain, req.body)
        event["httpMethod"] = req.method
        event["headers"] = headers
        if req.query:
            event["queryStringParameters"] = dict(parse_qsl(req.query, keep_blank_values=True))
            event["multiValueQueryStringParameters"] = {}
            for k, v in parse_qsl(req.query, keep_blank_values=True):
                event["multiValueQueryStringParameters"].setdefault(k, []).append(v)
    return event


def schedule() -> list[str]:
    return [kind for kind, (weight, _) in GENERATORS.items() for _ in range(weight)]


def generate(index: int, seed: int, kinds: tuple[str, ...] | None = None) -> Case:
    """Case ``index`` of ``seed``: the same event every time.  Each kind comes twice in
    a row, once per payload version."""
    order = [k for k in schedule() if kinds is None or k in kinds]
    kind = order[(index // 2) % len(order)]
    version = VERSIONS[index % 2]
    rng = random.Random(f"{seed}:{index}:{kind}")
    gen = GENERATORS[kind][1]
    made = gen(rng, corpus(), version) if kind == "odd_event" else gen(rng, corpus())
    if isinstance(made, Req):
        return Case(index, kind, version, make_event(made, version), made.expect_jpeg)
    return Case(index, kind, version, made, None)


# ---------------------------------------------------------------- checking the answers

@lru_cache(maxsize=None)
def schema_validator(name: str):
    """A JSON Schema 2020-12 validator of the contract's components/schemas/<name>, its
    refs resolved in the contract (function/web/openapi.yaml)."""
    import yaml
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    spec = yaml.safe_load(CONTRACT.read_text())
    registry = Registry().with_resource("urn:contract", Resource.from_contents(spec, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"urn:contract#/components/schemas/{name}"}, registry=registry)


def _route(event) -> tuple[str, str] | None:
    """(method, path) as the handler would see them, or None when it cannot tell."""
    from handlers.http import parse_event
    try:
        request = parse_event(event)
    except Exception:   # noqa: BLE001 - an odd event; the handler's answer is checked anyway
        return None
    return request.method, request.path


def check(case: Case, answer) -> str | None:
    """Why ``answer`` is a bad answer to ``case``; None when it is a good one."""
    if not isinstance(answer, dict) or not isinstance(answer.get("statusCode"), int):
        return f"not an API Gateway answer: {str(answer)[:100]}"
    status, headers, body = answer["statusCode"], answer.get("headers") or {}, answer.get("body")
    ctype = headers.get("Content-Type", "")
    if status >= 500:
        return f"{status}: {str(body)[:200]}"
    if 400 <= status < 500:
        if ctype != "application/json" or answer.get("isBase64Encoded"):
            return f"{status} with Content-Type {ctype!r}"
        try:
            payload = json.loads(body)
        except (TypeError, ValueError):
            return f"{status} whose body is not JSON: {str(body)[:100]}"
        errors = [e.message for e in schema_validator("Error").iter_errors(payload)]
        if errors:
            return f"{status} body outside the Error schema: {errors[0][:150]}"
        if payload["error"]["code"] == "internal_error":
            return f"{status} with code internal_error"
        if status == 405 and not headers.get("Allow"):
            return "405 without an Allow header"
        return None
    if status != 200:
        return f"unexpected status {status}"
    route = _route(case.event)
    if route and route[1] in PAGES and route[0] in ("GET", "HEAD"):
        return None if ctype in ("text/html; charset=utf-8", "application/json") else f"page with {ctype!r}"
    if ctype == "image/jpeg":
        if case.expect_jpeg is False:
            return "image/jpeg answer to a request that asked for JSON"
        if not answer.get("isBase64Encoded"):
            return "image/jpeg answer not base64-encoded"
        try:
            data = base64.b64decode(body, validate=True)
        except (TypeError, ValueError):
            return "image/jpeg answer whose body is not base64"
        if not data.startswith(b"\xff\xd8\xff") or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            return "image/jpeg answer that is not a JPEG"
        if not headers.get("X-Face-Count", "").isdigit():
            return "image/jpeg answer without X-Face-Count"
        return None
    if ctype != "application/json":
        return f"200 with Content-Type {ctype!r}"
    if case.expect_jpeg is True:
        return "JSON answer to a request that asked for the annotated JPEG"
    try:
        payload = json.loads(body)
    except (TypeError, ValueError):
        return f"200 whose body is not JSON: {str(body)[:100]}"
    errors = [e.message for e in schema_validator("Analysis").iter_errors(payload)]
    return f"200 body outside the Analysis schema: {errors[0][:150]}" if errors else None


# ---------------------------------------------------------------- the runner

def _fallback_off():
    """The pipeline with FALLBACK_MODE=off whatever the environment said (Rekognition
    must never be called); returns the undo."""
    from handlers import runtime
    before = runtime.pipeline.settings
    if before.fallback_mode != "off":
        runtime.pipeline.settings = dataclasses.replace(before, fallback_mode="off")
    return lambda: setattr(runtime.pipeline, "settings", before)


def run(n: int, seed: int, kinds: tuple[str, ...] | None = None, start: int = 0, progress=None) -> dict:
    """Cases start..start+n-1 of ``seed`` through the handler: the summary."""
    from handlers import api
    from local.events import LambdaContext

    schema_validator("Analysis"), schema_validator("Error")  # built before the clock runs
    corpus()
    undo = _fallback_off()
    per_kind: dict[str, dict] = {}
    statuses: dict[str, int] = {}
    codes: dict[str, int] = {}
    bad: list[dict] = []
    slowest = (0.0, None, None)
    began = time.perf_counter()
    # Powertools prints its metrics to stdout; they are of no use here.
    stack = contextlib.ExitStack()
    sink = stack.enter_context(open(os.devnull, "w"))
    stack.enter_context(contextlib.redirect_stdout(sink))
    try:
        for index in range(start, start + n):
            case = generate(index, seed, kinds)
            t0 = time.perf_counter()
            try:
                answer = api.lambda_handler(case.event, LambdaContext())
                problem = None
            except BaseException as exc:  # noqa: BLE001 - anything escaping is the finding
                if isinstance(exc, KeyboardInterrupt):
                    raise
                answer, problem = None, f"exception escaped: {type(exc).__name__}: {str(exc)[:200]}"
            elapsed = time.perf_counter() - t0
            problem = problem or check(case, answer)
            if problem is None and elapsed > SLOW_S:
                problem = f"slow: {elapsed * 1000:.0f} ms"
            stats = per_kind.setdefault(case.kind, {"requests": 0, "ok": 0, "client_errors": 0, "bad": 0,
                                                    "slowest_ms": 0.0})
            stats["requests"] += 1
            stats["slowest_ms"] = round(max(stats["slowest_ms"], elapsed * 1000), 1)
            if elapsed > slowest[0]:
                slowest = (elapsed, case.kind, index)
            if isinstance(answer, dict) and isinstance(answer.get("statusCode"), int):
                statuses[str(answer["statusCode"])] = statuses.get(str(answer["statusCode"]), 0) + 1
                if 400 <= answer["statusCode"] < 500:
                    try:
                        code = json.loads(answer["body"])["error"]["code"]
                        codes[code] = codes.get(code, 0) + 1
                    except (TypeError, ValueError, KeyError):
                        pass
            if problem:
                stats["bad"] += 1
                bad.append({"case": index, "kind": case.kind, "version": case.version, "problem": problem})
            elif answer["statusCode"] == 200:
                stats["ok"] += 1
            else:
                stats["client_errors"] += 1
            if progress and (index - start + 1) % progress == 0:
                print(f"  {index - start + 1}/{n} requests, {len(bad)} bad, "
                      f"{time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    finally:
        stack.close()
        undo()
    return {"seed": seed, "start": start, "requests": n, "bad_answers": len(bad),
            "slowest_ms": round(slowest[0] * 1000, 1), "slowest_kind": slowest[1], "slowest_case": slowest[2],
            "elapsed_s": round(time.perf_counter() - began, 1), "statuses": dict(sorted(statuses.items())),
            "error_codes": dict(sorted(codes.items(), key=lambda kv: -kv[1])), "per_kind": per_kind,
            "bad": bad}


def summary_text(s: dict, show: int = 20) -> str:
    lines = [f"{s['requests']} requests (seed {s['seed']}), {s['bad_answers']} bad answers, "
             f"slowest {s['slowest_ms']:.0f} ms ({s['slowest_kind']}, case {s['slowest_case']}), "
             f"{s['elapsed_s']:.0f} s in all",
             "statuses: " + ", ".join(f"{k} x{v}" for k, v in s["statuses"].items()),
             "error codes: " + ", ".join(f"{k} x{v}" for k, v in s["error_codes"].items()),
             f"{'kind':<16}{'requests':>9}{'200':>7}{'4xx':>7}{'bad':>6}{'slowest ms':>12}"]
    for kind, k in sorted(s["per_kind"].items()):
        lines.append(f"{kind:<16}{k['requests']:>9}{k['ok']:>7}{k['client_errors']:>7}{k['bad']:>6}"
                     f"{k['slowest_ms']:>12.0f}")
    for b in s["bad"][:show]:
        lines.append(f"BAD case {b['case']} ({b['kind']}, payload {b['version']}): {b['problem']}")
    if len(s["bad"]) > show:
        lines.append(f"... and {len(s['bad']) - show} more (--json lists them all)")
    return "\n".join(lines)


def _logs_to_stderr() -> None:
    """The handler's log lines (errors only, with their traces) on stderr, so that stdout
    holds the summary alone."""
    import logging

    from handlers import runtime  # noqa: F401 - creates the Powertools logger
    loggers = [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                       if isinstance(v, logging.Logger)]
    for log in loggers:
        for handler in log.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="how many requests (default 10,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=int, default=0, help="the first case's index")
    parser.add_argument("--case", type=int, help="replay this one case and print its event and answer")
    parser.add_argument("--kind", action="append", choices=KINDS, help="only these kinds (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    # Before the handlers are imported: no Rekognition, no log lines, no metrics.
    os.environ["FALLBACK_MODE"] = "off"
    os.environ["POWERTOOLS_LOG_LEVEL"] = "ERROR"
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "emotion")
    os.environ.setdefault("AWS_DEFAULT_REGION", "ap-northeast-2")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    kinds = tuple(args.kind) if args.kind else None
    _logs_to_stderr()
    import warnings
    warnings.simplefilter("ignore")   # Pillow's warnings on the bombs and broken EXIF blocks: expected

    if args.case is not None:
        from handlers import api
        from local.events import LambdaContext
        case = generate(args.case, args.seed, kinds)
        print(f"case {case.index}: {case.kind}, payload {case.version}")
        print(json.dumps(case.event, default=repr)[:2000])
        _fallback_off()
        answer = api.lambda_handler(case.event, LambdaContext())
        print(json.dumps(answer, default=repr)[:2000])
        print("bad:", check(case, answer))
        return 0

    summary = run(args.n, args.seed, kinds, args.start, progress=None if args.json else 1000)
    print(json.dumps(summary, indent=2) if args.json else summary_text(summary))
    return 1 if summary["bad_answers"] else 0


if __name__ == "__main__":
    sys.exit(main())
