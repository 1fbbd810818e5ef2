"""Every bad-input fixture decodes to a known RGB image or fails with a known reason.

    $ python -m pytest -q tests/test_images.py

The fixtures in tests/fixtures/bad_images/ were written once by
tests/fixtures/make_bad_images.py; the expectations here restate what that script drew.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.images import IMAGE_EXTENSIONS, BadImageError, is_image_file, load_image

FIXTURES = Path(__file__).parent / "fixtures" / "bad_images"
JPEG_TOL = 12  # colour error allowed after a lossy JPEG round trip of flat colour blocks


def rgb(name: str, **kwargs) -> np.ndarray:
    image = load_image(FIXTURES / name, **kwargs)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zero_byte.jpg", "zero-byte file"),
        ("text_file.png", "not an image: cannot identify image file"),
        ("truncated.jpg", "truncated image"),
    ],
)
def test_broken_files_raise_bad_image_error_with_reason(name, reason):
    with pytest.raises(BadImageError) as info:
        load_image(FIXTURES / name)
    assert info.value.reason == reason
    assert name in str(info.value)  # the message names the file


def test_same_failures_from_raw_bytes():
    for name, reason in [("zero_byte.jpg", "zero-byte"), ("truncated.jpg", "truncated")]:
        with pytest.raises(BadImageError, match=reason) as info:
            load_image((FIXTURES / name).read_bytes())
        assert info.value.source == "<bytes>"


def test_missing_file_is_a_bad_image_not_a_crash(tmp_path):
    with pytest.raises(BadImageError) as info:
        load_image(tmp_path / "nope.jpg")
    assert info.value.reason.startswith("unreadable file")


def test_decompression_bomb_is_refused_and_limit_kept():
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(BadImageError) as info:
        load_image(FIXTURES / "bomb.png")
    assert info.value.reason == (
        f"decompression bomb: {30000 * 30000} pixels > limit {Image.MAX_IMAGE_PIXELS}"
    )
    assert Image.MAX_IMAGE_PIXELS == limit_before is not None


def test_bomb_refused_even_if_limit_disabled_or_warning_ignored(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(BadImageError, match=f"{30000 * 30000} pixels > limit 89478485"):
        load_image(FIXTURES / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BadImageError, match="512 pixels > limit 300"):
            load_image(FIXTURES / "cmyk.jpg")


def test_bomb_warning_range_is_refused_too(monkeypatch):
    # Pillow only warns between 1x and 2x its limit; 32x16 = 512 pixels is in (300, 600].
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(BadImageError, match="decompression bomb: 512 pixels > limit 300"):
        load_image(FIXTURES / "cmyk.jpg")


def test_cmyk_jpeg_becomes_its_rgb_colours():
    pixels = rgb("cmyk.jpg")
    assert pixels.shape == (16, 32, 3)
    np.testing.assert_allclose(
        pixels[:, :14], np.broadcast_to([255, 0, 0], (16, 14, 3)), atol=JPEG_TOL
    )
    np.testing.assert_allclose(
        pixels[:, 18:], np.broadcast_to([0, 0, 255], (16, 14, 3)), atol=JPEG_TOL
    )


def test_palette_transparency_is_composited_on_white():
    pixels = rgb("palette_transparent.png")
    assert pixels.shape == (16, 16, 3)
    assert (pixels[:, :8] == 255).all()  # transparent (palette black) -> white
    assert (pixels[:, 8:] == [255, 0, 0]).all()


def test_la_alpha_is_composited_on_white():
    pixels = rgb("la.png")
    # black with alpha a over white: 255 * (1 - a / 255)
    for columns, alpha in [(slice(0, 4), 0), (slice(4, 8), 128), (slice(8, 16), 255)]:
        expected = round(255 * (1 - alpha / 255))
        np.testing.assert_allclose(pixels[:, columns], expected, atol=1)


def test_sixteen_bit_is_scaled_not_clipped():
    assert Image.open(FIXTURES / "sixteen_bit.png").mode == "I;16"
    pixels = rgb("sixteen_bit.png")
    row = np.array([0, 257, 25700, 32768, 50000, 65535])
    expected = np.rint(row * 255 / 65535)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[0, :, channel], expected)
        np.testing.assert_array_equal(pixels[3, :, channel], expected)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_wide_integer_and_float_greyscale_are_scaled(mode, tmp_path):
    values = np.array([[0, 1000, 65535]], np.float32)
    image = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32))
    assert image.mode == mode
    pixels = np.asarray(load_image(_tiff_bytes(image))).astype(int)
    np.testing.assert_array_equal(pixels[0, :, 1], np.rint(values[0] / 257))


def test_unit_float_greyscale_is_scaled_by_255():
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    pixels = np.asarray(load_image(_tiff_bytes(image))).astype(int)
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 128, 255])


def _tiff_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    return buffer.getvalue()


def test_exif_rotation_is_applied():
    stored = np.asarray(Image.open(FIXTURES / "exif_rotated.jpg")).astype(int)
    assert stored.shape == (20, 40, 3)
    pixels = rgb("exif_rotated.jpg")
    # Orientation 6 displays the stored image rotated 90 degrees clockwise.
    assert pixels.shape == (40, 20, 3)
    np.testing.assert_array_equal(pixels, np.rot90(stored, k=-1))
    # The stored top-left red block is now top-right; the bottom-left blue one top-left.
    np.testing.assert_allclose(pixels[1:7, -7:-1], np.full((6, 6, 3), [255, 0, 0]), atol=JPEG_TOL)
    np.testing.assert_allclose(pixels[1:7, 1:7], np.full((6, 6, 3), [0, 0, 255]), atol=JPEG_TOL)


def test_animated_gif_gives_first_frame():
    assert Image.open(FIXTURES / "animated.gif").n_frames == 2
    pixels = rgb("animated.gif")
    assert pixels.shape == (8, 8, 3)
    assert (pixels == [0, 255, 0]).all()


def test_one_pixel_image_loads():
    pixels = rgb("one_pixel.png")
    np.testing.assert_array_equal(pixels, [[[10, 20, 30]]])


def test_thin_image_is_padded_white_to_max_aspect():
    original = np.asarray(Image.open(FIXTURES / "thin_1x400.png")).astype(int)
    pixels = rgb("thin_1x400.png", max_aspect_ratio=20)
    assert pixels.shape == (400, 20, 3)  # 400 / 20 = 20 px wide
    np.testing.assert_array_equal(pixels[:, 9:10], original)  # centred column
    assert (np.delete(pixels, 9, axis=1) == 255).all()
    unpadded = rgb("thin_1x400.png", max_aspect_ratio=None)
    np.testing.assert_array_equal(unpadded, original)


def test_wide_image_is_padded_vertically():
    image = Image.new("RGB", (300, 2), (0, 0, 0))
    padded = np.asarray(load_image(_tiff_bytes(image), max_aspect_ratio=10)).astype(int)
    assert padded.shape == (30, 300, 3)
    assert (padded[14:16] == 0).all() and (np.delete(padded, [14, 15], axis=0) == 255).all()


def test_upper_case_jpg_and_webp_load():
    assert is_image_file(FIXTURES / "upper_case.JPG")
    upper = rgb("upper_case.JPG")
    np.testing.assert_allclose(upper[:, :6], np.full((8, 6, 3), [0, 255, 0]), atol=JPEG_TOL)
    webp = rgb("lossless.webp")
    assert (webp[:, :8] == [255, 0, 0]).all() and (webp[:, 8:] == [0, 255, 0]).all()


def test_is_image_file_by_extension_any_case():
    for ext in IMAGE_EXTENSIONS:
        assert is_image_file(f"a{ext}") and is_image_file(f"a{ext.upper()}")
    assert not is_image_file("a.txt") and not is_image_file("jpg")


def test_returned_image_outlives_the_file(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    image = load_image(path)
    path.unlink()
    assert image.getpixel((3, 3)) == (1, 2, 3)


def test_bad_image_error_pickles_with_reason():
    err = BadImageError("truncated image", source="a/b.jpg")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ValueError)
    assert (back.reason, back.source, str(back)) == (err.reason, err.source, str(err))
