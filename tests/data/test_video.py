"""save_video / VideoData round trips on real mp4 files."""
from __future__ import annotations

import os

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
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["clip.mp4"]  # no temporary file left


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
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        VideoData(video_file=str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="exactly one"):
        VideoData()


# ---------------------------------------------------------------------------------------------------------------
# Never destroying user data


def test_existing_file_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"my video")
    with pytest.raises(FileExistsError, match=r"clip\.mp4 exists; pass overwrite=True"):
        save_video(color_frames(2), path, progress=False)
    assert path.read_bytes() == b"my video"
    save_video(color_frames(2), path, progress=False, overwrite=True)
    assert len(VideoData(video_file=str(path))) == 2


def test_symlink_is_replaced_never_written_through(tmp_path):
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4").symlink_to(outside)
    with pytest.raises(FileExistsError):
        save_video(color_frames(2), out / "clip.mp4", progress=False)
    save_video(color_frames(2), out / "clip.mp4", progress=False, overwrite=True)
    assert outside.read_bytes() == b"precious"
    assert not (out / "clip.mp4").is_symlink() and len(VideoData(video_file=str(out / "clip.mp4"))) == 2


@pytest.fixture
def no_encoding(monkeypatch):
    """Fail the test if save_video starts encoding."""
    import diffsynth.data.video as video

    def refuse(*args, **kwargs):
        raise AssertionError("the path should have been refused before encoding")

    monkeypatch.setattr(video.imageio, "get_writer", refuse)


def test_unwritable_paths_are_refused_before_encoding(tmp_path, no_encoding):
    (tmp_path / "folder.mp4").mkdir()
    with pytest.raises(IsADirectoryError, match="folder.mp4: it is a folder"):
        save_video(color_frames(2), tmp_path / "folder.mp4", progress=False, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"clip\.mp4: .*file is not a folder"):
        save_video(color_frames(2), tmp_path / "file" / "clip.mp4", progress=False)
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        save_video(color_frames(2), tmp_path / "file" / "deeper" / "clip.mp4", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.mp4"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_folder_is_refused_before_encoding(tmp_path, no_encoding):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            save_video(color_frames(2), locked / "clip.mp4", progress=False)
    finally:
        locked.chmod(0o700)


def test_failure_mid_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import diffsynth.data.video as video

    temporary = []
    real_get_writer = video.imageio.get_writer
    monkeypatch.setattr(video.imageio, "get_writer", lambda path, **kw: temporary.append(path) or real_get_writer(
        path, **kw))
    frames = color_frames(3)
    frames[1] = frames[1].astype(np.float32)  # the 2nd frame fails after the 1st was encoded
    path = tmp_path / "clip.mp4"
    with pytest.raises(ValueError, match="uint8"):
        save_video(frames, path, progress=False)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"old video")
    with pytest.raises(ValueError, match="uint8"):
        save_video(frames, path, progress=False, overwrite=True)
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == b"old video"
    # The temporary file was hidden, unique, in the same folder, and kept the .mp4 suffix for ffmpeg.
    assert len(set(temporary)) == 2
    assert all(p.parent == tmp_path and p.name.startswith(".clip.") and p.suffix == ".mp4" for p in temporary)


def test_save_frames_refuses_existing_names_and_replaces_links_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"precious")
    (out / "00001.png").symlink_to(outside)
    with pytest.raises(FileExistsError, match="00001.png exists.*overwrite=True"):
        save_frames(color_frames(2), out)
    assert os.listdir(out) == ["00001.png"]  # nothing written
    save_frames(color_frames(2), out, overwrite=True)
    assert outside.read_bytes() == b"precious" and not (out / "00001.png").is_symlink()
    assert sorted(os.listdir(out)) == ["00000.png", "00001.png"]


def test_set_shape_is_gone():
    assert not hasattr(VideoData, "set_shape")


def test_a_generator_is_written_frame_by_frame_with_the_same_guarantees(tmp_path):
    consumed = []

    def stream(n=5):
        for i, frame in enumerate(color_frames(n)):
            consumed.append(i)
            yield Image.fromarray(frame) if i % 2 else frame
    path = tmp_path / "clip.mp4"
    save_video(stream(), path, progress=False)
    video = VideoData(video_file=str(path))
    assert len(video) == 5 and np.asarray(video[1]).reshape(-1, 3).mean(0).argmax() == 1
    consumed.clear()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_video(stream(), path, progress=False)
    assert consumed == []                                   # refused before the first frame was asked for
    with pytest.raises(ValueError, match="no frames"):
        save_video(iter([]), tmp_path / "empty.mp4", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_a_generator_failing_mid_stream_leaves_the_old_file_and_is_closed(tmp_path):
    closed = []

    def failing():
        try:
            yield color_frames(1)[0]
            raise RuntimeError("decode failed")
        finally:
            closed.append(True)
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"old video")
    with pytest.raises(RuntimeError, match="decode failed"):
        save_video(failing(), path, progress=False, overwrite=True)
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == b"old video" and closed

    def bad_second_frame():
        try:
            yield color_frames(1)[0]
            yield np.zeros((48, 64, 3), np.float32)
            yield color_frames(1)[0]
        finally:
            closed.append("second")
    stream = bad_second_frame()                              # held here, so only save_video can close it
    with pytest.raises(ValueError, match="uint8"):
        save_video(stream, tmp_path / "b.mp4", progress=False)
    assert closed[-1] == "second" and list(tmp_path.iterdir()) == [path]   # the writer's error closes the source


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_video_is_named_in_one_short_line(tmp_path, damage):
    path = tmp_path / "dance.mp4"
    if damage == "garbage":
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    else:
        good = save_video(color_frames(12, 96, 128), tmp_path / "good.mp4", progress=False)
        path.write_bytes(open(good, "rb").read()[:1500])
    with pytest.raises(ValueError) as caught:
        VideoData(video_file=str(path)).raw_data()
    message = str(caught.value)
    assert str(path) in message and "\n" not in message and len(message) < 400     # not ffmpeg's banner
    assert "ffmpeg version" not in message and "configuration:" not in message


def test_a_damaged_image_in_a_frame_folder_is_named(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    video = VideoData(image_folder=str(tmp_path))
    with pytest.raises(ValueError, match=f"cannot read frame 1 of {tmp_path / '1.png'}"):
        video.raw_data()
