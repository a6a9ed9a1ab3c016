import io

import numpy as np
import pytest
from PIL import Image

from tlpipe.data.images import BadImage, normalise


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb(size=10):
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_plain_jpeg_and_png_kept_byte_for_byte():
    for fmt, suffix in (("JPEG", ".jpg"), ("PNG", ".png")):
        data = encode(rgb(), fmt)
        stored, facts = normalise(data, 10**6)
        assert stored == data
        assert (facts.width, facts.height, facts.channels, facts.suffix) == (10, 10, 3, suffix)


def test_grayscale_kept_with_one_channel():
    stored, facts = normalise(encode(rgb().convert("L"), "PNG"), 10**6)
    assert facts.channels == 1 and facts.source_mode == "PNG/L"


@pytest.mark.parametrize(
    ("img", "fmt", "mode_in"),
    [
        (rgb().convert("CMYK"), "JPEG", "CMYK"),
        (rgb().convert("RGBA"), "PNG", "RGBA"),
        (Image.fromarray((np.arange(100).reshape(10, 10) * 600).astype(np.uint16)), "PNG", "I"),
        (rgb().convert("P"), "PNG", "P"),
        (rgb(), "BMP", "RGB"),
    ],
)
def test_odd_modes_converted_to_8bit_png(img, fmt, mode_in):
    stored, facts = normalise(encode(img, fmt), 10**6)
    again = Image.open(io.BytesIO(stored))
    assert again.format == "PNG" and again.mode in ("L", "RGB")
    assert facts.suffix == ".png" and mode_in in facts.source_mode


def test_sixteen_bit_scaled_not_clipped():
    img = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    stored, _ = normalise(encode(img, "PNG"), 10**6)
    assert np.asarray(Image.open(io.BytesIO(stored))).max() == 255


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file pretending to be a jpeg\n", "not an image"),
        (encode(rgb(64), "JPEG")[:200], "truncated or corrupt"),
    ],
)
def test_unusable_bytes_raise_with_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        normalise(data, 10**6)


def test_decompression_bomb_refused_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(BadImage, match="max_pixels"):
        normalise(data, 1_000_000)
