"""prepare_training_data on synthetic mp4s with the ONNX pose stand-ins, reading samples back, legacy pickles."""
from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import prepare_training_data as cli
from diffsynth.data import save_video
from diffsynth.training.samples import (
    UnsafePickleError, crop_and_resize, frame_file_name, load_legacy_pickle, prepare_training_data, processed_size,
    read_legacy_pickle_sample, read_training_sample,
)
from diffsynth.pose.draw import draw_pose

# A 120x80 landscape video is cropped to its centre 80x80 (columns 20..99). The stand-in detector fires when a
# pixel is brighter than 201 and then reports PERSON (640x640 detector pixels) = PERSON / 8 in the 80x80 frame.
SRC_W, SRC_H, SIZE = 120, 80, 80
PERSON = ((160.0, 40.0, 400.0, 600.0), 0.9, 0, 0.95)
PERSON_BOX = tuple(v / 8 for v in PERSON[0])  # (20, 5, 50, 75) in the cropped frame
PEOPLE = (False, True, True, False, True, True)  # frame 0 holds the next pose, frame 3 the previous one


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import standins

    folder = tmp_path_factory.mktemp("pose_models")
    return {"det_model": standins.build_detector(folder / "det.onnx", [PERSON]),
            "pose_model": standins.build_pose_model(folder / "pose.onnx")}


def _frame(person: bool) -> np.ndarray:
    """RGB: dark grey, with a bright figure inside the person box of the cropped frame when `person`."""
    frame = np.full((SRC_H, SRC_W, 3), 40, np.uint8)
    frame[:, :20] = (200, 0, 0)  # cropped away on the left ...
    frame[:, 100:] = (0, 0, 200)  # ... and on the right
    if person:
        x1, y1, x2, y2 = (int(v) for v in PERSON_BOX)
        frame[y1 + 5:y2 - 5, 20 + x1 + 5:20 + x2 - 5] = 240
    return frame


def _write(path, people=PEOPLE):
    save_video([_frame(p) for p in people], path, fps=12, progress=False)
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, models):
    """A video folder with one good video, processed once with the default out_dir."""
    video_dir = tmp_path_factory.mktemp("videos")
    _write(video_dir / "dance.mp4")
    summary = prepare_training_data(video_dir, progress=False, **models)
    return video_dir, summary


# ---------------------------------------------------------------------------------------------------------------
# Crop and names


@pytest.mark.parametrize("width, height, expected", [
    (41, 40, (40, 40)),  # upstream produced an empty frame here
    (101, 40, (40, 40)),  # upstream produced 41 columns (odd difference)
    (72, 40, (40, 40)),
    (40, 72, (40, 72)),  # portrait: untouched
    (2100, 2050, (1025, 1025)),  # cropped to 2050, then halved
    (2048, 3000, (1024, 1500)),  # portrait 2048 wide: halved
    (2047, 3000, (2047, 3000)),
])
def test_crop_and_resize_sizes(width, height, expected):
    frame = np.zeros((height, width, 3), np.uint8)
    assert crop_and_resize(frame).shape == (expected[1], expected[0], 3)
    assert processed_size(width, height) == expected


def test_crop_is_centred():
    frame = np.tile(np.arange(101, dtype=np.uint8)[None, :, None], (40, 1, 3))
    assert crop_and_resize(frame)[0, :, 0].tolist() == list(range(30, 70))
    assert crop_and_resize(frame[:, :41])[0, :, 0].tolist() == list(range(0, 40))


def test_frame_names_sort_for_any_count():
    assert frame_file_name(0, 6) == "000000.jpg"
    assert frame_file_name(5, 1_000_000) == "000005.jpg"
    assert frame_file_name(5, 1_000_001) == "0000005.jpg"


# ---------------------------------------------------------------------------------------------------------------
# The job end to end


def test_sample_folder_frames_poses_and_meta(prepared):
    video_dir, summary = prepared
    sample = video_dir / "training_video_pose" / "dance"
    assert summary.written == ["dance"] and not summary.failed and not summary.skipped
    assert summary.frames == 6 and summary.frames_without_person == 2
    names = [f"{i:06d}.jpg" for i in range(6)]
    assert sorted(p.name for p in (sample / "frames").iterdir()) == names
    assert sorted(p.name for p in (sample / "poses").iterdir()) == names

    meta = json.loads((sample / "meta.json").read_text())
    assert meta["num_frames"] == 6 and meta["files"] == names
    assert (meta["width"], meta["height"], meta["source_size"]) == (SIZE, SIZE, [SRC_W, SRC_H])
    assert meta["fps"] == pytest.approx(12) and meta["backend"] == "dwpose"
    assert meta["source"] == str(video_dir / "dance.mp4")
    assert meta["frames_without_person"] == [0, 3] and meta["pose_held_from"] == {"0": 1, "3": 2}

    # Frames: centre crop, correct RGB through PIL (the red and blue margins are gone).
    frame = np.asarray(Image.open(sample / "frames" / "000001.jpg"))
    assert frame.shape == (SIZE, SIZE, 3)
    assert frame[40, 35].min() > 200 and abs(frame[40, 2].astype(int) - 40).max() < 15
    assert abs(frame[:, :3].astype(int) - 40).mean() < 6 and abs(frame[:, -3:].astype(int) - 40).mean() < 6


def test_pose_images_are_drawn_at_frame_size_in_opencv_colour_order(prepared):
    from standins import synthetic_pose

    video_dir, _ = prepared
    poses = video_dir / "training_video_pose" / "dance" / "poses"
    pose = synthetic_pose(PERSON_BOX, SIZE, SIZE)
    drawn = draw_pose(pose, SIZE, SIZE)  # the array written with OpenCV, through the same JPEG round trip:
    expected = cv2.imdecode(cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, 95])[1], cv2.IMREAD_COLOR)
    for index in (1, 2, 4, 5):
        on_disk = cv2.imread(str(poses / f"{index:06d}.jpg"))
        assert on_disk.shape == (SIZE, SIZE, 3) and on_disk.any()
        assert np.abs(on_disk.astype(int) - expected).max() <= 2
    # The right toe joint is COLORS[19] = (255, 255, 0) in the array: PIL (and training) reads it as cyan.
    x, y = (pose.body[19] * SIZE).astype(int)
    rgb = np.asarray(Image.open(poses / "000002.jpg"))[y, x].astype(int)
    assert rgb[0] < 60 and rgb[1] > 200 and rgb[2] > 200
    # Frames with no person hold the neighbouring pose.
    held = [cv2.imread(str(poses / f"{i:06d}.jpg")) for i in range(4)]
    np.testing.assert_array_equal(held[0], held[1])
    np.testing.assert_array_equal(held[3], held[2])


def test_read_training_sample(prepared):
    video_dir, _ = prepared
    frames, poses, meta = read_training_sample(video_dir / "training_video_pose" / "dance")
    assert len(frames) == len(poses) == meta["num_frames"] == 6
    assert all(im.mode == "RGB" and im.size == (SIZE, SIZE) for im in frames + poses)
    some_frames, some_poses, _ = read_training_sample(video_dir / "training_video_pose" / "dance", indices=[4, 1])
    np.testing.assert_array_equal(np.asarray(some_frames[0]), np.asarray(frames[4]))
    np.testing.assert_array_equal(np.asarray(some_poses[1]), np.asarray(poses[1]))
    with pytest.raises(FileNotFoundError, match="meta.json"):
        read_training_sample(video_dir)


def test_existing_sample_is_skipped_and_overwrite_keeps_other_files(tmp_path, models, caplog):
    _write(tmp_path / "clip.mp4", PEOPLE[:3])
    out = tmp_path / "out"
    assert prepare_training_data(tmp_path, out, progress=False, **models).written == ["clip"]
    sample = out / "clip"
    meta_time = (sample / "meta.json").stat().st_mtime_ns
    (sample / "notes.txt").write_text("mine")
    (sample / "frames" / "000099.jpg").write_bytes(b"mine")  # looks like ours, but no manifest lists it
    (sample / "frames" / "keep.png").write_bytes(b"mine")

    with caplog.at_level(logging.INFO, logger="diffsynth.training.samples"):
        summary = prepare_training_data(tmp_path, out, progress=False, **models)
    assert summary.written == [] and "clip.mp4" in summary.skipped
    assert "clip.mp4" in caplog.text and "--overwrite" in caplog.text
    assert (sample / "meta.json").stat().st_mtime_ns == meta_time

    (sample / "frames" / "000001.jpg").write_bytes(b"old output")  # listed: redone below
    summary = prepare_training_data(tmp_path, out, overwrite=True, progress=False, **models)
    assert summary.written == ["clip"]
    assert (sample / "notes.txt").read_text() == "mine" and (sample / "frames" / "keep.png").exists()
    assert (sample / "frames" / "000099.jpg").read_bytes() == b"mine"
    assert np.asarray(Image.open(sample / "frames" / "000001.jpg")).shape == (SIZE, SIZE, 3)
    assert len(list((sample / "poses").iterdir())) == 3
    listed = json.loads((sample / ".prepare_training_data.json").read_text())["files"]
    assert sorted(listed) == sorted([f"{sub}/{i:06d}.jpg" for i in range(3) for sub in ("frames", "poses")]
                                    + ["meta.json"])


def test_broken_video_is_logged_and_the_others_go_on(tmp_path, models, caplog, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a_broken.mp4").write_bytes(b"not a video at all")
    _write(videos / "b_nobody.mov", [False, False])
    _write(videos / "c_good.mp4", PEOPLE[:2])
    _write(videos / "d_long.mkv", PEOPLE)
    (videos / "notes.txt").write_text("not a video")
    with caplog.at_level(logging.INFO):
        rc = cli.main(["--video_dir", str(videos), "--det_model", str(models["det_model"]),
                       "--pose_model", str(models["pose_model"]), "--max_frames", "3", "--quiet"])
    assert rc == 1  # some video failed
    out = videos / "training_video_pose"
    assert sorted(p.name for p in out.iterdir()) == ["c_good"]  # failed and skipped videos leave nothing
    assert "a_broken.mp4" in caplog.text and "no person found" in caplog.text
    assert "d_long.mkv" in caplog.text and "max_frames 3" in caplog.text
    printed = capsys.readouterr().out
    assert "4 videos: 1 written (2 frames, 1 with no person), 1 skipped, 2 failed" in printed


@pytest.mark.parametrize("name", ["poses/000001.jpg", "meta.json"])
def test_a_user_file_in_the_way_fails_that_video_and_is_kept(tmp_path, models, monkeypatch, name):
    from diffsynth.training import samples as training_data

    videos = tmp_path / "videos"
    videos.mkdir()
    _write(videos / "clip.mp4", PEOPLE[:3])
    _write(videos / "other.mp4", PEOPLE[:2])
    sample = tmp_path / "out" / "clip"
    (sample / name).parent.mkdir(parents=True, exist_ok=True)
    (sample / name).write_bytes(b"mine")  # a sample folder without a manifest
    real_write_image = training_data.write_image
    written = []
    monkeypatch.setattr(training_data, "write_image", lambda path, *a, **k: written.append(path) or real_write_image(
        path, *a, **k))
    summary = prepare_training_data(videos, tmp_path / "out", overwrite=True, progress=False, **models)
    assert summary.written == ["other"]
    assert name in summary.failed["clip.mp4"] and "move it away" in summary.failed["clip.mp4"]
    assert not any("clip" in path.parts for path in written)  # refused before any frame of it was written
    assert (sample / name).read_bytes() == b"mine"
    assert sorted(p.relative_to(sample).as_posix() for p in sample.rglob("*")) == sorted(
        {name, *(p.as_posix() for p in Path(name).parents if p != Path("."))})


def test_a_damaged_manifest_fails_that_video_and_deletes_nothing(tmp_path, models):
    _write(tmp_path / "clip.mp4", PEOPLE[:2])
    out = tmp_path / "out"
    assert prepare_training_data(tmp_path, out, progress=False, **models).written == ["clip"]
    sample = out / "clip"
    (sample / ".prepare_training_data.json").write_text("{truncated")
    before = sorted(sample.rglob("*"))
    summary = prepare_training_data(tmp_path, out, overwrite=True, progress=False, **models)
    assert "damaged" in summary.failed["clip.mp4"] and sorted(sample.rglob("*")) == before


def test_a_wrong_header_frame_count_leaves_a_manifest_of_exactly_the_files(tmp_path, models, monkeypatch):
    from diffsynth.training import samples as training_data

    _write(tmp_path / "clip.mp4", PEOPLE[:3])
    monkeypatch.setattr(training_data.FrameSource, "approximate_length", lambda self: 10)  # 3 frames really
    assert prepare_training_data(tmp_path, tmp_path / "out", progress=False, **models).written == ["clip"]
    sample = tmp_path / "out" / "clip"
    listed = json.loads((sample / ".prepare_training_data.json").read_text())["files"]
    on_disk = [p.relative_to(sample).as_posix() for p in sample.rglob("*") if p.is_file()]
    assert sorted(listed) == sorted(set(on_disk) - {".prepare_training_data.json"}) and len(listed) == 7


def test_symlinks_in_the_output_folder_are_never_followed(tmp_path, models):
    _write(tmp_path / "clip.mp4", PEOPLE[:3])
    out = tmp_path / "out"
    assert prepare_training_data(tmp_path, out, progress=False, **models).written == ["clip"]
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"precious")
    listed_pose = out / "clip" / "poses" / "000001.jpg"
    listed_pose.unlink()
    listed_pose.symlink_to(outside)  # a listed file that is now a link: replaced as a link
    assert prepare_training_data(tmp_path, out, overwrite=True, progress=False, **models).written == ["clip"]
    assert outside.read_bytes() == b"precious" and not listed_pose.is_symlink()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "000000.jpg").write_bytes(b"mine")
    frames = out / "clip" / "frames"
    for entry in frames.iterdir():
        entry.unlink()
    frames.rmdir()
    frames.symlink_to(elsewhere)  # a planted folder link: neither written into nor cleaned through
    summary = prepare_training_data(tmp_path, out, overwrite=True, progress=False, **models)
    assert "symbolic link" in summary.failed["clip.mp4"]
    assert os.listdir(elsewhere) == ["000000.jpg"] and (elsewhere / "000000.jpg").read_bytes() == b"mine"

    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "clip").symlink_to(elsewhere)  # the sample folder itself
    summary = prepare_training_data(tmp_path, tmp_path / "out2", overwrite=True, progress=False, **models)
    assert "symbolic link" in summary.failed["clip.mp4"] and os.listdir(elsewhere) == ["000000.jpg"]


def test_a_crash_leaves_a_manifest_the_next_overwrite_cleans(tmp_path, models, monkeypatch):
    from diffsynth.training import samples as training_data

    _write(tmp_path / "clip.mp4", PEOPLE[:4])
    out = tmp_path / "out"
    calls = []
    real_write_image = training_data.write_image

    def crashing_write_image(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # not handled anywhere: like a kill, no clean-up runs
        real_write_image(path, *args, **kwargs)

    monkeypatch.setattr(training_data, "write_image", crashing_write_image)
    with pytest.raises(KeyboardInterrupt):
        prepare_training_data(tmp_path, out, progress=False, **models)
    monkeypatch.undo()
    sample = out / "clip"
    assert sorted(p.name for p in (sample / "frames").iterdir()) == ["000000.jpg", "000001.jpg"]
    listed = json.loads((sample / ".prepare_training_data.json").read_text())["files"]
    assert "frames/000000.jpg" in listed and "frames/000001.jpg" in listed  # listed before they were written
    (sample / "notes.txt").write_text("mine")
    assert prepare_training_data(tmp_path, out, overwrite=True, progress=False, **models).written == ["clip"]
    assert sorted(str(p.relative_to(sample)) for p in sample.rglob("*") if p.is_file()) == sorted(
        [".prepare_training_data.json", "meta.json", "notes.txt"]
        + [f"{sub}/{i:06d}.jpg" for i in range(4) for sub in ("frames", "poses")])


@pytest.mark.parametrize("case", ["video_dir", "parent", "root", "home", "cwd", "file"])
def test_unsafe_out_dir_is_refused(tmp_path, models, monkeypatch, capsys, case):
    videos = tmp_path / "data" / "videos"
    videos.mkdir(parents=True)
    _write(videos / "clip.mp4", PEOPLE[:2])
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    out_dir, expected = {"video_dir": (videos, "is the input"), "parent": (tmp_path / "data", "contains the input"),
                         "root": ("/", "root"), "home": ("~", "home folder"), "cwd": (".", "current folder"),
                         "file": (tmp_path / "a_file", "not a folder")}[case]
    before = sorted(tmp_path.rglob("*"))
    assert cli.main(["--video_dir", str(videos), "--out_dir", str(out_dir), "--overwrite", "--quiet",
                     "--det_model", str(models["det_model"]), "--pose_model", str(models["pose_model"])]) == 1
    assert expected in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_reports_a_missing_folder(tmp_path, capsys):
    assert cli.main(["--video_dir", str(tmp_path / "nowhere"), "--quiet"]) == 1
    assert "video folder not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Legacy pickles


def _jpeg(bgr: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_legacy_pickles_load_without_code(tmp_path, protocol):
    red_bgr = np.zeros((16, 24, 3), np.uint8)
    red_bgr[..., 2] = 250
    keys = ["000000.jpg", "000001.jpg"]
    frames = {k: _jpeg(red_bgr) for k in keys}
    poses = {k: _jpeg(np.zeros_like(red_bgr)) for k in reversed(keys)}  # order comes from the frame pickle
    (tmp_path / "frame_data.pkl").write_bytes(pickle.dumps(frames, protocol=protocol))
    (tmp_path / "dw_pose_with_foot_wo_face.pkl").write_bytes(pickle.dumps(poses, protocol=protocol))

    assert load_legacy_pickle(tmp_path / "frame_data.pkl") == frames
    images, pose_images, meta = read_legacy_pickle_sample(tmp_path / "frame_data.pkl")
    assert len(images) == len(pose_images) == meta["num_frames"] == 2 and meta["files"] == keys
    assert images[0].mode == "RGB" and images[0].size == (24, 16)
    assert np.asarray(images[0])[8, 12].argmax() == 0  # cv2-encoded BGR red decodes as RGB red


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["os.system", "getattr", "list"])
def test_legacy_unpickler_refuses_anything_but_a_dict_of_bytes(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "frame_data.pkl"
    if payload == "os.system":
        data = pickle.dumps({"000000.jpg": _Evil(marker)})
        match = "refusing to load (os|posix).system"
    elif payload == "getattr":
        data = pickle.dumps(getattr, protocol=2)  # an allowed module, a name that is not allowed
        match = "refusing to load (__builtin__|builtins).getattr"
    else:
        data = pickle.dumps([b"jpeg"])
        match = "expected a dict"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError, match=match):
        load_legacy_pickle(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        read_legacy_pickle_sample(tmp_path)
