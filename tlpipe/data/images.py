"""Reading untrusted image bytes: decode fully, refuse bombs, normalise odd modes to 8-bit RGB/L."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Stored as-is: formats and modes that tf.io.decode_image reads into the same pixels PIL sees.
_KEEP_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}
_KEEP_MODES = {"L": 1, "RGB": 3}


class BadImage(Exception):
    """The bytes are not a usable image; the message says why (goes to the quarantine list)."""


@dataclass(frozen=True)
class ImageFacts:
    """What the manifest records about one stored image."""

    sha256: str
    width: int
    height: int
    channels: int
    bytes: int
    source_mode: str
    suffix: str


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = float(arr.max() - arr.min()) or 1.0
        return Image.fromarray(((arr - arr.min()) / span * 255.0).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("1", "L"):
        return img.convert("L")
    return img.convert("RGB")


def normalise(data: bytes, max_pixels: int) -> tuple[bytes, ImageFacts]:
    """Decode image bytes completely and return the bytes to store with their facts.

    JPEG/PNG in 8-bit grey or RGB are kept byte for byte; anything else (CMYK, RGBA, 16-bit, palette,
    other formats) is converted to an 8-bit PNG. Raises BadImage for empty, non-image, truncated,
    corrupt or oversized (decompression bomb) input.
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise BadImage(f"{img.width}x{img.height} pixels is over make_subset.max_pixels={max_pixels}")
            img.load()
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            # Pillow's own message quotes its internal 2x limit; say ours, which is what the user can change.
            raise BadImage(
                f"decompression bomb refused: over make_subset.max_pixels={max_pixels} pixels; raise it "
                "if the image is genuine"
            ) from None
        except UnidentifiedImageError:
            raise BadImage("not an image (unrecognised content)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadImage(f"truncated or corrupt image ({exc})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    source_mode = img.mode
    if img.format in _KEEP_FORMATS and img.mode in _KEEP_MODES and not getattr(img, "is_animated", False):
        stored, suffix, channels = data, _KEEP_FORMATS[img.format], _KEEP_MODES[img.mode]
    else:
        if getattr(img, "is_animated", False):
            img.seek(0)
        converted = _to_8bit(img)
        buf = io.BytesIO()
        converted.save(buf, format="PNG")
        stored, suffix, channels = buf.getvalue(), ".png", _KEEP_MODES[converted.mode]
    facts = ImageFacts(
        sha256=hashlib.sha256(stored).hexdigest(),
        width=img.width,
        height=img.height,
        channels=channels,
        bytes=len(stored),
        source_mode=f"{img.format}/{source_mode}",
        suffix=suffix,
    )
    return stored, facts
