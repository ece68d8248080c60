"""save_video / VideoData round trips on real mp4 files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffsynth.data import VideoData, list_images, save_frames, save_video


def color_frames(n=6, h=48, w=64):
    frames = []
    for i in range(n):
        a = np.zeros((h, w, 3), np.uint8)
        a[..., i % 3] = 200        # R, G, B in turn
        frames.append(a)
    return frames


def test_mp4_round_trip_keeps_count_size_and_colours(tmp_path):
    path = save_video(color_frames(), tmp_path / "sub" / "clip.mp4", fps=15, progress=False)
    video = VideoData(video_file=path)
    assert len(video) == 6
    frames = video.raw_data()
    assert frames[0].size == (64, 48)
    for i, frame in enumerate(frames):
        mean = np.asarray(frame).reshape(-1, 3).mean(0)
        assert mean.argmax() == i % 3 and abs(mean.max() - 200) < 12
    assert not list(tmp_path.glob("**/*.partial.mp4"))


def test_odd_sizes_are_padded_and_resize_works(tmp_path):
    path = save_video([np.full((33, 35, 3), 90, np.uint8)] * 2, tmp_path / "odd.mp4", progress=False)
    video = VideoData(video_file=path, height=16, width=32)
    assert video[0].size == (32, 16)
    assert VideoData(video_file=path)[-1].size == (36, 34)


def test_image_folder_in_numeric_order(tmp_path):
    for name, value in [("10.png", 10), ("9.png", 9), ("2.png", 2)]:
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / name)
    assert [p.name for p in list_images(tmp_path)] == ["2.png", "9.png", "10.png"]
    video = VideoData(image_folder=str(tmp_path))
    assert [np.asarray(f)[0, 0, 0] for f in video.raw_data()] == [2, 9, 10]
    paths = save_frames(video.raw_data(), tmp_path / "out")
    assert paths[0].endswith("00000.png")


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        save_video([], tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="uint8"):
        save_video([np.zeros((4, 4, 3), np.float32)], tmp_path / "x.mp4", progress=False)
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.partial.mp4").exists()
    with pytest.raises(FileNotFoundError):
        VideoData(video_file=str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="exactly one"):
        VideoData()
