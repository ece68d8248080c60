"""The one image reader: EXIF orientation applied, 16-bit scaled, alpha dropped, errors that name the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffsynth.data.image_file import read_image_bgr, read_image_rgb, to_rgb_uint8


def upright_photo(height: int = 160, width: int = 120) -> np.ndarray:
    """A portrait photo whose orientation shows: red top-left quadrant, blue bottom-right, grey elsewhere."""
    image = np.full((height, width, 3), 128, np.uint8)
    image[: height // 2, : width // 2] = (220, 30, 30)
    image[height // 2:, width // 2:] = (30, 30, 220)
    return image


def save_sideways(path, upright: np.ndarray, quality: int = 95):
    """Store `upright` turned 90 degrees counter-clockwise with EXIF orientation 6 ("rotate 90 CW to display"), as
    phones store portrait photos."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).rotate(90, expand=True).save(path, exif=exif, quality=quality)
    return path


def is_upright(rgb: np.ndarray) -> bool:
    """Red dominates the top-left quadrant and blue the bottom-right (the layout of `upright_photo`)."""
    h, w = rgb.shape[:2]
    top_left = rgb[: h // 2 - 2, : w // 2 - 2].reshape(-1, 3).astype(float).mean(0)
    bottom_right = rgb[h // 2 + 2:, w // 2 + 2:].reshape(-1, 3).astype(float).mean(0)
    return top_left[0] > top_left[2] + 100 and bottom_right[2] > bottom_right[0] + 100


def test_exif_orientation_is_applied(tmp_path):
    path = save_sideways(tmp_path / "phone.jpg", upright_photo())
    with Image.open(path) as stored:
        assert stored.size == (160, 120) and not is_upright(np.asarray(stored.convert("RGB")))
    rgb = read_image_rgb(path)
    assert rgb.shape == (160, 120, 3) and is_upright(rgb)
    assert np.array_equal(read_image_bgr(path), rgb[..., ::-1])


def test_an_opened_phone_photo_reaches_the_pipeline_upright(tmp_path):
    """`input_image=Image.open(photo)` (upstream's README call) is turned upright where every image enters the
    pipeline (`image_to_tensor` -> `to_rgb_uint8`), the same pixels `read_image_rgb` gives."""
    from diffsynth.data.images import image_to_tensor

    path = save_sideways(tmp_path / "phone.jpg", upright_photo())
    with Image.open(path) as opened:
        assert np.array_equal(to_rgb_uint8(opened), read_image_rgb(path))
        tensor = image_to_tensor(opened, 160, 120)
    assert is_upright(((tensor[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))


def test_sixteen_bit_is_scaled_and_alpha_dropped(tmp_path):
    grey = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    rgb = read_image_rgb(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    assert abs(int(rgb[-1, -1, 0]) - round(int(grey[-1, -1]) * 255 / 65535)) <= 1     # scaled, not clipped
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 1] = 200
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert (read_image_rgb(tmp_path / "clear.png") == (0, 200, 0)).all()          # colour under the alpha kept


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image_rgb(tmp_path / "nope.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        read_image_rgb(tmp_path / "broken.jpg")
