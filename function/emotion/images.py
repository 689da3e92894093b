"""Decoding what a client sent into pixels, and re-encoding for Rekognition."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from emotion.errors import InputError

# Formats we decode; anything else Pillow recognises is refused with 415.
SUPPORTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}


@dataclass
class DecodedImage:
    """An image in its upright orientation (EXIF applied)."""

    rgb: np.ndarray          # (H, W, 3) uint8
    format: str              # "JPEG", "PNG", ...
    data: bytes              # the bytes as received
    reoriented: bool         # True when EXIF orientation changed the pixels

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def decode(data: bytes, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Decode JPEG, PNG, WebP or BMP bytes; raise InputError for anything else."""
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
            reoriented = _orientation(img) not in (None, 1)
            rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError("invalid_image", "The data is not a readable JPEG, PNG, WebP or BMP image.") from exc
    return DecodedImage(rgb=rgb, format=fmt, data=data, reoriented=reoriented)


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
