"""Robust image decoding: bytes -> RGB uint8, or a reason why not.

Datasets of millions of frames hold a few broken files. Decoding never raises on
bad data: it returns a ``DecodeResult`` whose ``reason`` says what was wrong, so the
caller can skip the file and report it. Pure PIL + numpy (no Ray), so ingest,
translation and the tests share it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Above this many pixels a file is refused rather than decoded: a decompression bomb
# (a tiny PNG that claims 50000 x 50000) would otherwise exhaust the worker's memory.
# 64 Mpx holds every common dataset frame (Cityscapes is 2 Mpx) with a wide margin.
DEFAULT_MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class DecodeResult:
    image: np.ndarray | None  # (H, W, 3) uint8 RGB, or None when the file was refused
    reason: str = ""  # why it was refused; empty on success
    note: str = ""  # what was converted on the way (mode, orientation), for the report


TOO_LARGE = "too large"  # how a refusal for size starts, for callers that suggest a larger limit


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodeResult:
    """Decode any PIL-readable image to (H, W, 3) uint8 RGB.

    Grayscale, palette, RGBA (alpha dropped onto black), 16-bit and CMYK images are
    converted; EXIF orientation is applied. Zero-byte, truncated, corrupt, non-image
    and oversized files come back with a reason instead of an exception.
    """
    if not data:
        return DecodeResult(None, "empty file (0 bytes)")
    # PIL's own guard checks the header's size when the file is opened, before raycut's
    # below: at its default (89 Mpx) it would cap any larger limit a caller asks for
    # (`raycut translate --max-megapixels`). It is set to twice this limit, so that
    # raycut's check names the size, and PIL's still stops a header claiming far more.
    Image.MAX_IMAGE_PIXELS = 2 * max_pixels
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) on some bombs; make every bomb an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    return DecodeResult(None, f"{TOO_LARGE}: {w}x{h} = {w * h / 1e6:.0f} Mpx > {max_pixels / 1e6:g} Mpx limit")
                mode = im.mode
                im.load()  # force the full decode here, so truncation is caught here
                orientation = _exif_orientation(im)
                oriented = ImageOps.exif_transpose(im)
                notes = [f"EXIF orientation {orientation} applied"] if orientation not in (None, 1) else []
                rgb = _to_rgb(oriented)
                if mode != "RGB":
                    notes.append(f"{mode} converted to RGB")
                return DecodeResult(np.asarray(rgb, dtype=np.uint8), note="; ".join(notes))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            # PIL's message names the in-memory buffer ("<_io.BytesIO object at 0x...>"),
            # which says nothing about the file.
            return DecodeResult(None, "not an image (no image format PIL reads recognises its bytes)")
        return DecodeResult(None, f"{TOO_LARGE}, a possible decompression bomb ({_first_line(e)})")
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return DecodeResult(None, f"corrupt or truncated ({_first_line(e)})")


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail the decode
        return None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the full range to 8 bits instead of clipping.
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
