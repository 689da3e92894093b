"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in tests/test_contract.py.

Requests: schemathesis sends its own small sample files for image/jpeg, png and webp
bodies; BMP bodies are sent as it sends application/octet-stream ones.
Answers: an image/jpeg answer must be a JPEG that decodes, no smaller than 1 pixel and
at most the contract's 2,048 pixels long (annotated_max_side)."""
import io

import schemathesis
from PIL import Image

schemathesis.serializer.alias("image/bmp", "application/octet-stream")


@schemathesis.deserializer("image/jpeg")
def annotated_photo(ctx, response):
    with Image.open(io.BytesIO(response.content)) as image:
        if image.format != "JPEG":
            raise ValueError(f"an image/jpeg answer holds {image.format}")
        image.load()
        if not 1 <= max(image.size) <= 2048:
            raise ValueError(f"an annotated photo of {image.size}")
        return {"width": image.width, "height": image.height}
