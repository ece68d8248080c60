"""diffsynth.data.framing: generation sizes by area, and pictures fitted into frames without distortion."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from diffsynth.data.framing import (RESOLUTIONS, fit_area, frame_image, framed_size, parse_area, plan_framing,
                                    prepare_reference, resolve_canvas)


def circle_picture(width: int, height: int, radius: int, background=(30, 90, 160)) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = background
    cv2.circle(image, (width // 2, height // 2), radius, (255, 255, 255), -1)
    return image


def circle_aspect(image: np.ndarray) -> float:
    """Width / height of the white disc's bounding box."""
    ys, xs = np.nonzero(image.min(axis=2) > 200)
    return (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)


@pytest.mark.parametrize("area", [RESOLUTIONS["480p"], RESOLUTIONS["720p"], 4096])
def test_fit_area_matches_wans_rule_written_out(area):
    """Wan2.1 I2V: lat_h = round(sqrt(area * h / w) // 8 // 2 * 2), height = 8 * lat_h (same for the width)."""
    for width, height in [(480, 832), (832, 480), (512, 512), (1920, 1080), (750, 1101), (3000, 400), (17, 999)]:
        aspect = height / width
        lat_h = round(math.sqrt(area * aspect) // 8 // 2 * 2)
        lat_w = round(math.sqrt(area / aspect) // 8 // 2 * 2)
        assert fit_area(width, height, area) == (max(8 * lat_h, 16), max(8 * lat_w, 16))


@pytest.mark.parametrize("photo, expected", [((1080, 1920), (832, 464)), ((1920, 1080), (464, 832)),
                                             ((1000, 1000), (624, 624))])
def test_sizes_follow_the_photo_in_multiples_of_16(photo, expected):
    height, width = fit_area(*photo, RESOLUTIONS["480p"])
    assert (height, width) == expected and height % 16 == 0 and width % 16 == 0
    assert height * width <= RESOLUTIONS["480p"]


def test_parse_area():
    assert parse_area("480p") == 832 * 480 and parse_area("720P") == 1280 * 720 and parse_area("4096") == 4096
    with pytest.raises(ValueError, match="480p, 720p or a pixel area"):
        parse_area("1080p")


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_a_landscape_circle_stays_a_circle_in_a_portrait_frame(mode):
    picture = circle_picture(300, 160, 40)      # 80 px across: inside the centre crop too
    framed = frame_image(picture, 96, 160, mode)
    assert framed.shape == (160, 96, 3)
    assert circle_aspect(framed) == pytest.approx(1.0, abs=0.05)


def test_stretch_keeps_the_upstream_distortion():
    framed = frame_image(circle_picture(300, 160, 60), 96, 160, "stretch")
    assert circle_aspect(framed) < 0.5          # 96/300 across, 160/160 down


def test_pad_takes_the_border_colour_and_crop_keeps_the_centre():
    picture = circle_picture(200, 100, 30, background=(10, 200, 40))
    padded = frame_image(picture, 100, 100, "pad")
    assert (padded[0, 0] == (10, 200, 40)).all() and (padded[-1, -1] == (10, 200, 40)).all()
    cropped = frame_image(picture, 100, 100, "crop")
    assert circle_aspect(cropped) == pytest.approx(1.0, abs=0.05)
    assert (cropped[50, 50] == 255).all()       # the centre survives the crop


@pytest.mark.parametrize("mode", ["pad", "crop", "stretch"])
def test_points_map_like_pixels(mode):
    """A marker's position predicted by `Framing.map_normalised` is where the framed picture has it."""
    picture = np.zeros((120, 300, 3), np.uint8)
    marker = (170, 70)                           # inside the centre crop too
    cv2.circle(picture, marker, 6, (255, 255, 255), -1)
    framed = frame_image(picture, 100, 160, mode)
    framing = plan_framing(300, 120, 100, 160, mode)
    predicted = framing.map_normalised(np.array([marker[0] + 0.5, marker[1] + 0.5]) / (300, 120)) * (100, 160)
    ys, xs = np.nonzero(framed.max(axis=2) > 127)
    assert np.allclose([xs.mean() + 0.5, ys.mean() + 0.5], predicted, atol=1.0)


def test_prepare_reference_keeps_the_photos_scale():
    picture = circle_picture(300, 160, 60)
    assert framed_size(300, 160, 96, 160, "pad") == (300, 500)
    assert framed_size(300, 160, 96, 160, "crop") == (96, 160)
    assert prepare_reference(picture, 96, 160, "pad").shape == (500, 300, 3)
    assert prepare_reference(picture, 96, 160, "stretch") is picture


def test_canvas():
    assert resolve_canvas(None, 1920, 1080) == (512, 768)
    assert resolve_canvas("640x480", 1920, 1080) == (640, 480)
    width, height = resolve_canvas("auto", 1920, 1080)
    assert width > height and width % 16 == 0 and abs(width / height - 16 / 9) < 0.1
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        resolve_canvas("big", 10, 10)


@pytest.mark.parametrize("mode, source, target", [
    ("pad", (41, 20), (41, 27)),      # 7 rows of padding: 3 above, 4 below
    ("pad", (20, 41), (27, 41)),      # 7 columns
    ("crop", (41, 27), (41, 20)),     # 7 rows cut: 4 from the top, 3 from the bottom
    ("crop", (27, 41), (20, 41)),
])
def test_odd_leftovers_keep_keypoints_on_their_pixels(mode, source, target):
    """No resampling (scale 1) and an odd number of leftover pixels: a one-pixel marker lands exactly where
    `map_normalised` puts it, so the framed photo and its keypoints cannot be half a pixel apart."""
    picture = np.zeros((source[1], source[0], 3), np.uint8)
    marker = (13, 11)
    picture[marker[1], marker[0]] = 255
    framed = frame_image(picture, *target, mode)
    framing = plan_framing(*source, *target, mode)
    assert framing.scale == (1.0, 1.0)
    predicted = framing.map_normalised(np.array([marker[0] + 0.5, marker[1] + 0.5]) / source) * target
    ys, xs = np.nonzero(framed.max(axis=2) > 127)
    assert len(xs) == 1 and np.allclose([xs[0] + 0.5, ys[0] + 0.5], predicted, atol=1e-9)
