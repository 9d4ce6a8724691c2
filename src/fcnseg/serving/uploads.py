"""A request's image: its bytes checked and decoded as ``fcnseg predict`` reads a file.

Every refusal is a ``Refused`` with its HTTP status, a short reason for ``/metrics`` and one
sentence for the client: an empty body, a type that is not an image, bytes that are not an
image or are cut short, an image over the pixel limit (checked from its header, before a
byte of it is decoded).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.base import rgb_array

__all__ = ["Refused", "decode_image", "check_content_type", "IMAGE_TYPES_HINT"]

IMAGE_TYPES_HINT = (
    "send the image file's bytes with Content-Type image/* (curl --data-binary @photo.jpg "
    "-H 'Content-Type: image/jpeg'), or as the multipart field 'image' (curl -F image=@photo.jpg)"
)


class Refused(Exception):
    """A request the server cannot answer as asked: ``status`` (a 4xx, or 500 when the
    model failed), ``reason`` (a metrics label) and ``message`` (one sentence for the
    client)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def check_content_type(content_type: str) -> None:
    """Refuse a body whose type is not an image (octet-stream and a missing type pass: the
    bytes decide)."""
    media = content_type.split(";")[0].strip().lower()
    if media and not media.startswith("image/") and media != "application/octet-stream":
        raise Refused(415, "wrong_type", f"the body is {media}, not an image: {IMAGE_TYPES_HINT}")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """H x W x 3 uint8 RGB, turned upright by its EXIF orientation: the array ``fcnseg
    predict`` reads from the same file."""
    if not data:
        raise Refused(400, "empty", f"the body is empty: {IMAGE_TYPES_HINT}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise _too_many_pixels(None, max_pixels) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise Refused(
                400, "not_an_image", f"the body is not an image PIL can read: {IMAGE_TYPES_HINT}"
            ) from None
        if image.width * image.height > max_pixels:
            raise _too_many_pixels(image, max_pixels)
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise Refused(
                400,
                "undecodable",
                f"the {image.format or ''} image cannot be decoded ({error}): it is corrupt or "
                "cut short; send the whole file",
            ) from None
    return rgb_array(image)


def _too_many_pixels(image: Image.Image | None, max_pixels: int) -> Refused:
    size = "" if image is None else f" ({image.width}x{image.height})"
    return Refused(
        413,
        "too_many_pixels",
        f"the image{size} has more than the server's limit of {max_pixels:,} pixels: send a "
        "smaller image, or start the server with a larger --max-pixels",
    )
