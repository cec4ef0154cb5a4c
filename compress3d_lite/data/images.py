"""Condition images: any image file or array in, one RGB picture on a known background out.

    img = load_image("photo.png")                  # PIL.Image, mode "RGB"
    img = load_image(rgba_uint8_array, background=1.0)

What real images bring, and what happens to each:

    RGBA, LA, P with transparency   composited on ``background`` (grey level in [0, 1]; the toy
                                    renders are composited on white, so white is the default)
    grayscale (L), 1-bit            replicated to three channels
    16-bit (I;16, I) and float (F)  rescaled to 8 bits from their own range (not clipped)
    CMYK, YCbCr, ...                converted by Pillow
    EXIF orientation                applied (phone photos)
    huge files                      JPEGs are decoded at reduced size (``draft``); anything is
                                    shrunk to at most ``max_side`` pixels before further work;
                                    images beyond Pillow's decompression-bomb limit are refused
    not an image / corrupt          ImageError naming the file

No background removal and no re-centring: the toy renders show the object centred by the camera
(radius 4.6, field of view 40 deg), so a photo works best cropped to a centred object on a plain
background (e.g. with ``rembg``, not a dependency).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES = 256 * 2 ** 20  # no image we read is larger on disk


class ImageWarning(UserWarning):
    """An image we can read but that deserves a word (e.g. over Pillow's decompression limit)."""


class ImageError(ValueError):
    """An image that cannot be read; the message names the file and the problem."""


def _name(src) -> str:
    return str(src) if isinstance(src, (str, Path)) else f"<{type(src).__name__}>"


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit integer and float images -> 8-bit "L", scaled from their own range."""
    a = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        hi = 1.0 if a.size and np.nanmax(a) <= 1.0 else max(float(np.nanmax(a)), 1e-12)
    else:  # "I", "I;16", "I;16B", ...: 16-bit data unless every value fits in 8 bits
        hi = 65535.0 if a.size and a.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.nan_to_num(a) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def _from_array(a: np.ndarray, name: str) -> Image.Image:
    """An image array -> PIL: uint8 as is, uint16 scaled, floats in [0, 1], other integers in
    0..255. Anything else (floats outside [0, 1] such as 0..255, NaN, integers outside 0..255,
    an empty array, a non-numeric dtype) is an ImageError saying what to pass instead."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ImageError(f"{name}: array of shape {a.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"{name}: an empty image array of shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ImageError(f"{name}: float image with {int((~np.isfinite(a)).sum())} NaN or infinite values")
        if a.min() < -1e-3 or a.max() > 1 + 1e-3:  # a rounding error's slack, then clipped
            raise ImageError(f"{name}: float image spans {a.min():.4g}..{a.max():.4g}; float images must be in "
                             "[0, 1] (divide 0..255 values by 255, or pass uint8)")
        a = np.clip(a, 0.0, 1.0) * 255.0 + 0.5
    elif a.dtype == np.uint16:
        a = a / 257.0 + 0.5
    elif a.dtype.kind in "iu" and a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise ImageError(f"{name}: {a.dtype.name} image spans {a.min()}..{a.max()}; integer images must be in "
                             "0..255 (uint16: 0..65535)")
    elif a.dtype.kind not in "iub":
        raise ImageError(f"{name}: an image array of dtype {a.dtype.name}; expected uint8, uint16 or float in [0, 1]")
    a = a.astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[a.shape[-1]]
    return Image.fromarray(a[..., 0] if mode == "L" else a, mode)


def load_image(src, background: float = 1.0, max_side: int = 1024) -> Image.Image:
    """A path, bytes, numpy array (uint8, uint16 or float in [0, 1]) or PIL image -> PIL RGB.

    Raises ImageError (a ValueError) naming the file when it is missing, not an image, corrupt or
    too large."""
    name = _name(src)
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, np.ndarray):
        img = _from_array(src, name)
    else:
        if isinstance(src, (str, Path)):
            path = Path(src)
            if not path.exists():
                raise ImageError(f"{name}: no such file")
            if path.is_dir():
                raise ImageError(f"{name}: is a folder, not an image")
            if not path.is_file():  # a device such as /dev/zero, a pipe, a socket: reading may never end
                raise ImageError(f"{name}: not a regular file")
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ImageError(f"{name}: {size / 2 ** 20:.0f} MiB, larger than any image we read "
                                 f"({MAX_FILE_BYTES / 2 ** 20:.0f} MiB)")
            data = path.read_bytes()
        elif isinstance(src, (bytes, bytearray)):
            data = bytes(src)
        else:
            raise ImageError(f"{name}: cannot read an image from a {type(src).__name__}")
        if not data:
            raise ImageError(f"{name}: empty file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                try:
                    img = Image.open(io.BytesIO(data))
                except Image.DecompressionBombWarning:  # over Pillow's limit, under twice it: read, say so once
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                        img = Image.open(io.BytesIO(data))
                    warnings.warn(f"{name}: {img.width} x {img.height} pixels, more than Pillow's safety limit of "
                                  f"{Image.MAX_IMAGE_PIXELS:,}; decoded anyway and scaled down to {max_side} px",
                                  ImageWarning, stacklevel=2)
            img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale (no-op otherwise)
            img.load()
        except Image.DecompressionBombError as e:
            raise ImageError(f"{name}: too large to decode safely ({e})") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image file (Pillow cannot identify it)") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{name}: corrupt or truncated image ({e})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not stop a good picture
        pass
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if img.mode == "RGBA":
        bg = Image.new("RGB", img.size, (round(255 * background),) * 3)
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")
