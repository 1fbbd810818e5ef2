"""Decode one image file (or its raw bytes) safely into an RGB ``PIL.Image``.

    >>> from data_prep.images import load_image, BadImageError
    >>> img = load_image("train_images/cat/0a1b.jpg")   # RGB, EXIF rotation applied
    >>> load_image(b"not an image")                      # raises BadImageError
    BadImageError: <bytes>: not an image: cannot identify image file

Every way a file can fail (empty, not an image, truncated, decompression bomb, unreadable,
odd mode) raises :class:`BadImageError`, whose ``reason`` is a short text for
``failures.csv``; callers count and report these instead of crashing.

Policies, and why:

- Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is kept. Pillow only *warns*
  between 1x and 2x the limit; here the warning is an error too, so a bomb is never decoded.
  The size is also checked here, before decoding, so the guard holds when another library has
  set the limit to None (Pillow's default limit is used then) or silenced the warning.
- Truncated files are detected by decoding the whole image here (``.load()``), not later in
  a worker where the error would be far from the file name.
- Transparency is composited on white: the background of a sketch.
- 16-bit (and 32-bit integer / float) greyscale is *scaled* to 8 bits; Pillow's own
  ``convert("L")`` clips, which turns most 16-bit images white.
- 1-pixel and thin images are valid (the model's image processor resizes them). Images more
  elongated than ``max_aspect_ratio`` are padded with white, centred, to that ratio: the
  processor resizes the *short* side to ~256 px, so a 1x400 strip would become a
  256x102400 array (100 MB of float32 per image) of which the centre crop keeps a sliver.
  Only a width or height of 0 is rejected.
"""

from __future__ import annotations

import io
import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
"""Extensions of files treated as images (compared lower-cased)."""

DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
"""Pillow's default ``MAX_IMAGE_PIXELS``; used only if something set that limit to None."""

MAX_ASPECT_RATIO = 20.0
"""Longer side / shorter side above which :func:`load_image` pads with white."""

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")
_MAX_MESSAGE = 160


class BadImageError(ValueError):
    """An input that cannot be turned into an RGB image; ``reason`` goes to failures.csv."""

    def __init__(self, reason: str, *, source: str = "<bytes>") -> None:
        super().__init__(f"{source}: {reason}")
        self.reason = reason
        self.source = source

    def __reduce__(self):
        # Default exception pickling replays ``args`` (the full message) into __init__,
        # which would lose ``source``; DataLoader workers and DDP ranks pickle errors.
        return (_rebuild_bad_image_error, (self.reason, self.source))


def _rebuild_bad_image_error(reason: str, source: str) -> BadImageError:
    return BadImageError(reason, source=source)


def is_image_file(name: str | os.PathLike) -> bool:
    """True when ``name`` ends with one of :data:`IMAGE_EXTENSIONS`, in any case."""
    return os.fspath(name).lower().endswith(IMAGE_EXTENSIONS)


def load_image(
    source: str | os.PathLike | bytes,
    *,
    max_aspect_ratio: float | None = MAX_ASPECT_RATIO,
    name: str | None = None,
) -> Image.Image:
    """Open a file path or raw bytes and return a fully decoded RGB image.

    EXIF orientation is applied, the first frame of an animation is used, every mode is
    converted to RGB (see the module docstring for how), and any failure raises
    :class:`BadImageError`. ``max_aspect_ratio=None`` turns the white padding of very
    elongated images off. ``name`` replaces the source in error messages (for bytes that
    came from a dataset row).
    """
    if name is None:
        name = "<bytes>" if isinstance(source, bytes | bytearray) else os.fspath(source)
    try:
        image = _decode(source, name)
        image = _to_rgb(image)
    except BadImageError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file, by contract
        raise BadImageError(_describe(err), source=name) from err
    width, height = image.size
    if width < 1 or height < 1:
        raise BadImageError(f"too small: {width}x{height}", source=name)
    if max_aspect_ratio is not None:
        image = _pad_to_aspect(image, max_aspect_ratio)
    return image


def _decode(source: str | os.PathLike | bytes, name: str) -> Image.Image:
    """Open, check the bomb limit, decode every pixel of frame 0, apply EXIF rotation."""
    if isinstance(source, bytes | bytearray):
        if len(source) == 0:
            raise BadImageError("zero-byte file", source=name)
        fp: str | io.BytesIO = io.BytesIO(source)
    else:
        try:
            size = os.stat(source).st_size
        except OSError as err:
            raise BadImageError(f"unreadable file: {err.strerror or err}", source=name) from err
        if size == 0:
            raise BadImageError("zero-byte file", source=name)
        fp = name
    with warnings.catch_warnings():
        # Only the bomb warning becomes an error; Pillow's other warnings stay warnings.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(fp) as opened:
            _check_pixels(opened.size)
            # Image.open leaves animations on frame 0; load() decodes all of it, so a
            # truncated file fails here, and Pillow re-checks the bomb limit per frame.
            opened.load()
            try:
                image = ImageOps.exif_transpose(opened)
            except Exception:  # noqa: BLE001
                # A malformed EXIF block does not make the pixels bad: keep them unrotated.
                image = opened.copy()
            if image is opened:  # closing ``opened`` below must not free what we return
                image = opened.copy()
    return image


def _pixel_limit() -> int:
    return Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS


def _check_pixels(size: tuple[int, int]) -> None:
    if size[0] * size[1] > _pixel_limit():
        # Same text as Pillow's, so _describe reports both the same way.
        raise Image.DecompressionBombError(
            f"Image size ({size[0] * size[1]} pixels) exceeds limit of {_pixel_limit()} pixels"
        )


def _describe(err: Exception) -> str:
    """Map a decoder exception to a short, grouped reason."""
    message = str(err)
    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        found = _BOMB_SIZE.search(message)
        pixels = found.group(1) if found else "?"
        return f"decompression bomb: {pixels} pixels > limit {_pixel_limit()}"
    if isinstance(err, UnidentifiedImageError):
        return "not an image: cannot identify image file"
    if "truncated" in message.lower():
        return "truncated image"
    if isinstance(err, OSError) and err.errno:
        return f"unreadable file: {err.strerror or message}"
    return f"corrupt image: {type(err).__name__}: {message}"[:_MAX_MESSAGE]


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on white."""
    if image.mode in _HIGH_DEPTH_MODES:
        image = _high_depth_to_l(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float greyscale image to 8 bits ("L").

    16-bit modes map 0..65535 onto 0..255. For "I" and "F" the range is not in the mode, so
    it is read from the values: floats within [0, 1] are scaled by 255, values within
    [0, 255] kept, within [0, 65535] treated as 16-bit, anything else stretched min-max.
    """
    values = np.asarray(image).astype(np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        scaled = values / 257.0
    elif image.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    else:
        scaled = (values - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _pad_to_aspect(image: Image.Image, max_ratio: float) -> Image.Image:
    """Centre ``image`` on white so that long side / short side <= ``max_ratio``."""
    width, height = image.size
    if max(width, height) <= max_ratio * min(width, height):
        return image
    if width < height:
        size = (int(np.ceil(height / max_ratio)), height)
    else:
        size = (width, int(np.ceil(width / max_ratio)))
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas
