"""Decoding what a client sent into pixels, and re-encoding for Rekognition."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from emotion.errors import InputError

# Formats we decode; anything else Pillow recognises is refused with 415.
SUPPORTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}


@dataclass
class DecodedImage:
    """An image in its upright orientation (EXIF applied).

    ``rgb`` may be smaller than the picture (a large JPEG is decoded at a reduced size,
    see decode); ``width`` and ``height`` are always those of the upright picture, the
    coordinates every answer is given in."""

    rgb: np.ndarray          # (H', W', 3) uint8, H'/height = W'/width = scale
    format: str              # "JPEG", "PNG", ...
    data: bytes              # the bytes as received
    reoriented: bool         # True when EXIF orientation changed the pixels
    width: int
    height: int

    @property
    def scale(self) -> float:
        """Pixels of ``rgb`` per pixel of the picture (1.0, or 1/2, 1/4, 1/8)."""
        return self.rgb.shape[1] / self.width


def decode(data: bytes, max_bytes: int, max_pixels: int, min_side: int = 0) -> DecodedImage:
    """Decode JPEG, PNG, WebP or BMP bytes; raise InputError for anything else.

    With ``min_side``, a JPEG whose longer side is at least twice that is decoded at
    1/2, 1/4 or 1/8 of its size, the smallest whose longer side is still at least
    ``min_side`` (libjpeg's DCT scaling: a 12-megapixel phone photo decodes in a
    fraction of the time and memory)."""
    if not data:
        raise InputError("empty_image", "The image is empty.")
    if len(data) > max_bytes:
        raise InputError("image_too_large",
                         f"The image is {len(data)} bytes; the limit is {max_bytes} bytes.", status=413)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            if fmt not in SUPPORTED_FORMATS:
                raise InputError("unsupported_image_format",
                                 f"{fmt or 'This'} images are not supported; send JPEG, PNG, WebP or BMP.",
                                 status=415)
            if img.width * img.height > max_pixels:
                raise InputError("image_too_large",
                                 f"The image has {img.width}x{img.height} pixels; the limit is "
                                 f"{max_pixels} pixels.", status=413)
            width, height = img.size
            orientation = _orientation(img)
            reoriented = orientation not in (None, 1)
            if fmt == "JPEG" and min_side and max(width, height) >= 2 * min_side:
                factor = min_side / max(width, height)
                img.draft("RGB", (math.ceil(width * factor), math.ceil(height * factor)))
            # exif_transpose and convert each copy the pixels even when there is nothing
            # to do (about 0.5 s for a 36-megapixel PNG): only when there is.
            upright = ImageOps.exif_transpose(img) if reoriented else img
            rgb = np.asarray(upright if upright.mode == "RGB" else upright.convert("RGB"))
            if orientation in (5, 6, 7, 8):  # a quarter turn: the upright picture is h x w
                width, height = height, width
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError("invalid_image", "The data is not a readable JPEG, PNG, WebP or BMP image.") from exc
    return DecodedImage(rgb=rgb, format=fmt, data=data, reoriented=reoriented, width=width, height=height)


def _orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block is no reason to refuse the picture
        return None


def jpeg_or_png_within(image: DecodedImage, max_bytes: int) -> bytes:
    """Bytes Rekognition accepts (JPEG or PNG, at most max_bytes) showing the same
    upright pixels as ``image``: the original when it already qualifies, else a JPEG,
    downscaled until it fits."""
    if image.format in ("JPEG", "PNG") and not image.reoriented and len(image.data) <= max_bytes:
        return image.data
    pil = Image.fromarray(image.rgb)
    while True:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=90)
        if buffer.tell() <= max_bytes or min(pil.size) < 64:
            return buffer.getvalue()
        pil = pil.resize((pil.width * 3 // 4, pil.height * 3 // 4), Image.Resampling.LANCZOS)
