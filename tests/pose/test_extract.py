"""The run_align_pose job end to end on the ONNX stand-ins, and its handling of bad input."""
from __future__ import annotations

import json
import os
import warnings

import cv2
import imageio.v2 as imageio
import numpy as np
import pytest

import run_align_pose
import standins
from diffsynth.pose import DWPoseBackend, PoseAlignmentWarning, redraw_from_json, select_person
from diffsynth.pose.backends import FramePose
from diffsynth.pose.extract import frame_file_name


def _write_video(path, frames, fps=10):
    with imageio.get_writer(str(path), fps=fps, macro_block_size=16) as writer:
        for frame in frames:
            writer.append_data(frame[:, :, ::-1])
    return path


@pytest.fixture
def reference_image(tmp_path, make_frame):
    """A square reference image (so its normalised pose differs from the 2:3 driving frames')."""
    path = tmp_path / "reference.png"
    cv2.imwrite(str(path), cv2.resize(make_frame(), (720, 720)))
    return path


def _run(*args):
    return run_align_pose.main([*map(str, args), "--quiet"])


def test_video_end_to_end(tmp_path, det_model, pose_model, reference_image, make_frame, capsys):
    video = _write_video(tmp_path / "drive.mp4", [make_frame(p) for p in (True, False, True, True, False)])
    out, preview = tmp_path / "poses", tmp_path / "preview.mp4"
    rc = _run("--ref_name", reference_image, "--source_video_paths", video, "--saved_pose_dir", out,
              "--det_model", det_model, "--pose_model", pose_model, "--preview", preview)
    assert rc == 0
    assert "5 frames (2 with no person" in capsys.readouterr().out
    written = ["0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg", "pose.jpg", "poses.json"]
    assert sorted(p.name for p in out.iterdir()) == [".run_align_pose.json", *written]
    assert sorted(json.loads((out / ".run_align_pose.json").read_text())["files"]) == written
    assert cv2.imread(str(out / "0003.jpg")).shape == (768, 512, 3)

    document = json.loads((out / "poses.json").read_text())
    frames = document["frames"]
    assert [f["person_found"] for f in frames] == [True, False, True, True, False]
    assert [f["pose_from_frame"] for f in frames] == [0, 0, 2, 3, 3]  # held from the previous frame
    assert frames[1]["raw"] is None and frames[1]["aligned"] == frames[0]["aligned"]
    # Frame 0's neck lands on the reference neck, although the two images have different shapes.
    reference_neck = document["reference"]["pose"]["body"][1]
    np.testing.assert_allclose(frames[0]["aligned"]["body"][1], reference_neck, atol=1e-9)
    assert frames[0]["raw"]["body"][1] != pytest.approx(reference_neck, abs=1e-3)
    assert document["retargeting"]["fallbacks"] == []

    reader = imageio.get_reader(str(preview))
    panels = [frame for frame in reader]
    assert len(panels) == 5 and panels[0].shape == (768, 1024, 3)


def test_image_folder_holds_the_next_pose_at_the_start(tmp_path, det_model, pose_model, reference_image,
                                                       make_frame):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, person in enumerate((False, False, True, True)):
        cv2.imwrite(str(folder / f"frame_{i + 8}.png"), make_frame(person))  # 8, 9, 10, 11: natural order
    out = tmp_path / "poses"
    assert _run("--ref_name", reference_image, "--source_video_paths", folder, "--saved_pose_dir", out,
                "--det_model", det_model, "--pose_model", pose_model) == 0
    frames = json.loads((out / "poses.json").read_text())["frames"]
    assert [f["pose_from_frame"] for f in frames] == [2, 2, 2, 3]
    np.testing.assert_array_equal(cv2.imread(str(out / "0000.jpg")), cv2.imread(str(out / "0002.jpg")))


def test_no_person_in_any_frame_is_a_clear_error(tmp_path, det_model, pose_model, reference_image, make_frame,
                                                 capsys):
    video = _write_video(tmp_path / "dark.mp4", [make_frame(False)] * 3)
    rc = _run("--ref_name", reference_image, "--source_video_paths", video, "--saved_pose_dir", tmp_path / "o",
              "--det_model", det_model, "--pose_model", pose_model)
    assert rc == 1 and "no person found in any of the 3" in capsys.readouterr().err


def _args(out, video, reference_image, det_model, pose_model, *extra):
    return ("--ref_name", reference_image, "--source_video_paths", video, "--saved_pose_dir", out,
            "--det_model", det_model, "--pose_model", pose_model, *extra)


def test_existing_output_folder_is_refused_then_overwritten_selectively(tmp_path, det_model, pose_model,
                                                                       reference_image, make_frame, capsys):
    out = tmp_path / "poses"
    args = _args(out, _write_video(tmp_path / "long.mp4", [make_frame()] * 3), reference_image, det_model,
                 pose_model)
    assert _run(*args) == 0
    (out / "0001.jpg").write_bytes(b"old output")  # still listed in the manifest: replaced below
    for name in ("notes.txt", "2023.jpg", "00017.jpg", "0003.jpg"):  # digit-named user files no manifest lists
        (out / name).write_text("mine")
    assert _run(*args) == 1 and "--overwrite" in capsys.readouterr().err
    assert (out / "0001.jpg").read_bytes() == b"old output"  # untouched after the refusal

    shorter = _args(out, _write_video(tmp_path / "short.mp4", [make_frame()] * 2), reference_image, det_model,
                    pose_model, "--overwrite")
    assert _run(*shorter) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([
        ".run_align_pose.json", "0000.jpg", "0001.jpg", "0003.jpg", "00017.jpg", "2023.jpg", "notes.txt", "pose.jpg",
        "poses.json"])  # the listed 0002.jpg of the longer run is gone; every user file is kept
    assert all((out / name).read_text() == "mine" for name in ("notes.txt", "2023.jpg", "00017.jpg", "0003.jpg"))
    assert cv2.imread(str(out / "0001.jpg")) is not None
    assert len(json.loads((out / "poses.json").read_text())["frames"]) == 2


@pytest.mark.parametrize("name", ["pose.jpg", "poses.json", "0001.jpg"])
def test_overwrite_never_replaces_a_file_no_manifest_lists(tmp_path, det_model, pose_model, reference_image,
                                                           make_frame, capsys, monkeypatch, name):
    from diffsynth.pose import extract

    video = _write_video(tmp_path / "drive.mp4", [make_frame()] * 2)
    out = tmp_path / "poses"
    out.mkdir()
    (out / name).write_text("mine")  # a folder without a manifest: from a user, or an older version of the tool
    if name != "0001.jpg":  # names known before the slow part are refused before it
        monkeypatch.setattr(extract, "create_backend", lambda *a: pytest.fail("refused too late"))
    assert _run(*_args(out, video, reference_image, det_model, pose_model, "--overwrite")) == 1
    error = capsys.readouterr().err
    assert name in error and "move it away" in error
    assert os.listdir(out) == [name] and (out / name).read_text() == "mine"


def test_a_folder_from_before_manifests_is_adopted_through_its_poses_json(tmp_path, det_model, pose_model,
                                                                           reference_image, make_frame, capsys):
    """Without a manifest, a poses.json of this tool's format lists the tool's files: --overwrite replaces exactly
    those; a poses.json of any other kind adopts nothing."""
    out = tmp_path / "poses"
    args = _args(out, _write_video(tmp_path / "long.mp4", [make_frame()] * 3), reference_image, det_model,
                 pose_model, "--overwrite")
    assert _run(*args) == 0
    (out / ".run_align_pose.json").unlink()                  # as written by a version without manifests
    (out / "2023.jpg").write_text("mine")
    shorter = _args(out, _write_video(tmp_path / "short.mp4", [make_frame()] * 2), reference_image, det_model,
                    pose_model, "--overwrite")
    assert _run(*shorter) == 0
    assert sorted(p.name for p in out.iterdir()) == [".run_align_pose.json", "0000.jpg", "0001.jpg", "2023.jpg",
                                                     "pose.jpg", "poses.json"]       # 0002.jpg was the tool's
    assert (out / "2023.jpg").read_text() == "mine"
    (out / ".run_align_pose.json").unlink()
    (out / "poses.json").write_text(json.dumps({"format": "my notes", "frames": []}))
    assert _run(*shorter) == 1 and "pose.jpg" in capsys.readouterr().err


def test_a_listed_symlink_is_replaced_and_its_target_kept(tmp_path, det_model, pose_model, reference_image,
                                                         make_frame):
    video = _write_video(tmp_path / "drive.mp4", [make_frame()] * 2)
    out = tmp_path / "poses"
    args = _args(out, video, reference_image, det_model, pose_model, "--overwrite")
    assert _run(*args) == 0
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"precious")
    (out / "0001.jpg").unlink()
    (out / "0001.jpg").symlink_to(outside)
    assert _run(*args) == 0
    assert outside.read_bytes() == b"precious"
    assert not (out / "0001.jpg").is_symlink() and cv2.imread(str(out / "0001.jpg")) is not None


def test_a_crash_while_drawing_leaves_a_manifest_the_next_overwrite_cleans(tmp_path, det_model, pose_model,
                                                                          reference_image, make_frame, monkeypatch):
    from diffsynth.pose import extract

    video = _write_video(tmp_path / "drive.mp4", [make_frame()] * 4)
    out = tmp_path / "poses"
    calls = []
    real_write_image = extract.write_image

    def crashing_write_image(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # not handled anywhere: like a kill
        real_write_image(path, *args, **kwargs)

    monkeypatch.setattr(extract, "write_image", crashing_write_image)
    with pytest.raises(KeyboardInterrupt):
        _run(*_args(out, video, reference_image, det_model, pose_model))
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == [".run_align_pose.json", "0000.jpg", "pose.jpg"]
    assert len(json.loads((out / ".run_align_pose.json").read_text())["files"]) == 6  # listed before writing
    (out / "notes.txt").write_text("mine")
    assert _run(*_args(out, video, reference_image, det_model, pose_model, "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".run_align_pose.json", "0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg", "notes.txt", "pose.jpg", "poses.json"]


@pytest.mark.parametrize("case", ["root", "home", "cwd", "source_folder", "contains_source", "contains_reference",
                                  "file"])
def test_unsafe_output_folders_are_refused_before_any_work(tmp_path, det_model, pose_model, make_frame, capsys,
                                                           monkeypatch, case):
    data = tmp_path / "data"
    frames = data / "frames"
    frames.mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(frames / f"{i}.png"), make_frame())
    reference = data / "reference.png"
    cv2.imwrite(str(reference), make_frame())
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    out, expected = {
        "root": ("/", "file system root"), "home": ("~", "home folder"), "cwd": (".", "current folder"),
        "source_folder": (frames, "is the input"), "contains_source": (data, "contains the input"),
        "contains_reference": (data, "contains the input"), "file": (reference, "is not a folder"),
    }[case]
    source = frames if case != "contains_reference" else _write_video(tmp_path / "drive.mp4", [make_frame()] * 2)
    (home / "mine.txt").write_text("mine")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    rc = _run(*_args(out, source, reference, det_model, pose_model, "--overwrite"))
    assert rc == 1 and expected in capsys.readouterr().err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written or deleted


def test_tilde_in_the_output_folder_is_expanded(tmp_path, det_model, pose_model, reference_image, make_frame,
                                                monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    video = _write_video(tmp_path / "drive.mp4", [make_frame()])
    assert _run(*_args("~/poses", video, reference_image, det_model, pose_model, "--preview", "~/p.mp4")) == 0
    assert (home / "poses" / "0000.jpg").is_file() and (home / "p.mp4").is_file()
    assert not any(p.name == "~" for p in tmp_path.rglob("*"))


def test_preview_refuses_an_existing_file_unless_overwrite(tmp_path, det_model, pose_model, reference_image,
                                                          make_frame, capsys):
    video = _write_video(tmp_path / "drive.mp4", [make_frame()] * 2)
    preview = tmp_path / "preview.mp4"
    preview.write_bytes(b"my video")
    out = tmp_path / "poses"
    assert _run(*_args(out, video, reference_image, det_model, pose_model, "--preview", preview)) == 1
    assert "preview.mp4 exists; pass --overwrite" in capsys.readouterr().err
    assert preview.read_bytes() == b"my video" and not out.exists()  # refused before the slow part

    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"precious")
    preview.unlink()
    preview.symlink_to(outside)
    assert _run(*_args(out, video, reference_image, det_model, pose_model, "--preview", preview, "--overwrite")) == 0
    assert outside.read_bytes() == b"precious" and not preview.is_symlink()
    assert imageio.get_reader(str(preview)).count_frames() == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_preview_cannot_replace_an_input(tmp_path, det_model, pose_model, reference_image, make_frame, capsys):
    video = _write_video(tmp_path / "drive.mp4", [make_frame()] * 2)
    size = video.stat().st_size
    assert _run(*_args(tmp_path / "o", video, reference_image, det_model, pose_model, "--preview", video,
                       "--overwrite")) == 1
    assert "is the input" in capsys.readouterr().err and video.stat().st_size == size


@pytest.mark.parametrize("case", ["unreadable_image", "missing_video", "empty_video", "empty_folder", "missing_model"])
def test_bad_input_fails_with_a_message(tmp_path, det_model, pose_model, reference_image, make_frame, capsys, case):
    ref, source, det = reference_image, _write_video(tmp_path / "ok.mp4", [make_frame()]), det_model
    if case == "unreadable_image":
        ref = tmp_path / "broken.jpg"
        ref.write_bytes(b"not a jpeg")
        expected = "cannot read image"
    elif case == "missing_video":
        source, expected = tmp_path / "nowhere.mp4", "not found"
    elif case == "empty_video":
        source = tmp_path / "empty.mp4"
        source.write_bytes(b"")
        expected = "no frame could be read"
    elif case == "empty_folder":
        source = tmp_path / "nothing"
        source.mkdir()
        expected = "is empty"
    else:   # named: the default (auto) would take the offline backend instead
        det, expected = tmp_path / "yolox_l.onnx", "modelscope download --model xiaolaowx/UniAnimate-DiT"
    out = tmp_path / "out"
    rc = _run("--ref_name", ref, "--source_video_paths", source, "--saved_pose_dir", out,
              "--det_model", det, "--pose_model", pose_model, *(["--backend", "dwpose"] if case == "missing_model" else []))
    assert rc == 1 and expected in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_reference_with_missing_limbs_still_aligns(tmp_path, det_model, make_frame, reference_image):
    scores = np.full(133, 0.9, np.float32)
    scores[[7, 9]] = 0.05  # left elbow and wrist never visible
    scores[91:112] = 0.05  # nor the left hand
    pose_model = standins.build_pose_model(tmp_path / "armless.onnx", scores=scores)
    video = _write_video(tmp_path / "drive.mp4", [make_frame()] * 2)
    out = tmp_path / "poses"
    with pytest.warns(PoseAlignmentWarning, match="left_elbow"):
        rc = _run("--ref_name", reference_image, "--source_video_paths", video, "--saved_pose_dir", out,
                  "--det_model", det_model, "--pose_model", pose_model)
    assert rc == 0
    document = json.loads((out / "poses.json").read_text())
    assert any("left_upper_arm" in f for f in document["retargeting"]["fallbacks"])
    aligned = document["frames"][0]["aligned"]
    assert aligned["body"][6] is None and all(p is None for p in aligned["hands"][0])
    assert all(np.isfinite(p).all() for p in aligned["body"] if p is not None)


def test_smoothing_flag_changes_the_poses_only_when_given(tmp_path, det_model, pose_model, reference_image,
                                                         make_frame):
    video = _write_video(tmp_path / "drive.mp4", [make_frame()] * 3)
    base = ("--ref_name", reference_image, "--source_video_paths", video, "--det_model", det_model,
            "--pose_model", pose_model)
    assert _run(*base, "--saved_pose_dir", tmp_path / "a") == 0
    assert _run(*base, "--saved_pose_dir", tmp_path / "b", "--smooth") == 0
    a = json.loads((tmp_path / "a" / "poses.json").read_text())
    b = json.loads((tmp_path / "b" / "poses.json").read_text())
    assert a["smoothing"] is None and b["smoothing"]["min_cutoff"] == 1.0
    # Constant input: smoothing is the identity, so the poses agree.
    np.testing.assert_allclose(a["frames"][2]["aligned"]["body"], b["frames"][2]["aligned"]["body"], atol=1e-12)


def test_redraw_from_edited_json(tmp_path, det_model, pose_model, reference_image, make_frame):
    video = _write_video(tmp_path / "drive.mp4", [make_frame()])
    out = tmp_path / "poses"
    assert _run("--ref_name", reference_image, "--source_video_paths", video, "--saved_pose_dir", out,
                "--det_model", det_model, "--pose_model", pose_model) == 0
    before = cv2.imread(str(out / "0000.jpg"))
    document = json.loads((out / "poses.json").read_text())
    document["frames"][0]["aligned"]["body"][0] = None  # drop the nose
    (out / "poses.json").write_text(json.dumps(document))
    assert redraw_from_json(out / "poses.json") == 1
    assert np.abs(cv2.imread(str(out / "0000.jpg")).astype(int) - before).max() > 100

    # Into another folder: a user file in the way is refused before anything is written, and so is a frame name
    # that leaves the folder.
    other = tmp_path / "other"
    other.mkdir()
    (other / "0000.jpg").write_text("mine")
    with pytest.raises(FileExistsError, match="0000.jpg"):
        redraw_from_json(out / "poses.json", other)
    assert os.listdir(other) == ["0000.jpg"] and (other / "0000.jpg").read_text() == "mine"
    (other / "0000.jpg").unlink()
    assert redraw_from_json(out / "poses.json", other) == 1
    assert sorted(json.loads((other / ".run_align_pose.json").read_text())["files"]) == ["0000.jpg", "pose.jpg"]
    assert redraw_from_json(out / "poses.json", other) == 1  # its own files are replaced
    document["frames"][0]["file"] = "../escaped.jpg"
    (out / "poses.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="not a plain .jpg file name"):
        redraw_from_json(out / "poses.json")
    assert not (tmp_path / "escaped.jpg").exists()


def test_frame_names_are_wide_enough_to_sort():
    assert frame_file_name(3, 10) == "0003.jpg"
    assert frame_file_name(5, 12000) == "00005.jpg" and frame_file_name(11999, 12000) == "11999.jpg"


# Person selection --------------------------------------------------------------------------------------------------

def test_select_person_prefers_the_tracked_box_over_a_bigger_one():
    boxes = np.array([[500.0, 0, 900, 800], [100.0, 100, 300, 600]])  # big newcomer first, tracked person second
    assert select_person(boxes) == 0  # first frame: the largest
    assert select_person(boxes, previous_box=np.array([110.0, 90, 310, 610])) == 1
    assert select_person(boxes, previous_box=np.array([2000.0, 0, 2100, 100])) == 0  # far from all: nearest centre
    assert select_person(np.zeros((0, 4))) is None


def test_select_person_after_fast_motion_stays_near_the_previous_box():
    # The tracked person (index 1) moved so far that no box overlaps the previous one; the big newcomer (index 0)
    # is far away, so the nearby box wins although it is smaller.
    boxes = np.array([[900.0, 0, 1400, 900], [420.0, 100, 620, 600]])
    assert select_person(boxes, previous_box=np.array([100.0, 100, 300, 600])) == 1
    # Two boxes near the previous one: the larger of them.
    boxes = np.array([[320.0, 100, 420, 300], [330.0, 100, 530, 600], [2000.0, 0, 3000, 1000]])
    assert select_person(boxes, previous_box=np.array([100.0, 100, 300, 600])) == 1


def test_tracker_follows_the_same_person_through_the_video():
    class _Detector:  # two people; the order of the boxes flips every frame, as detector scores fluctuate
        def __init__(self):
            self.calls = 0

        def __call__(self, image):
            self.calls += 1
            a, b = np.array([10.0, 10, 110, 310]), np.array([200.0, 0, 360, 420])
            return (np.stack([a, b]) if self.calls % 2 else np.stack([b, a])), np.array([0.9, 0.8])

    backend = DWPoseBackend.__new__(DWPoseBackend)
    backend.detector = _Detector()
    chosen = []
    backend._pose = lambda image, box: chosen.append(box[0]) or standins.synthetic_pose()
    tracker = backend.new_sequence()
    tracker.previous_box = np.array([12.0, 12, 112, 312])  # following the smaller person on the left
    for _ in range(4):
        assert isinstance(tracker(np.zeros((4, 4, 3), np.uint8)), FramePose)
    assert chosen == [10.0] * 4


def test_package_import_is_light():
    import subprocess
    import sys

    code = ("import sys, diffsynth.pose; "
            "print(sorted(m for m in ('torch', 'torchvision', 'onnxruntime', 'mediapipe') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_warnings_do_not_fire_for_a_complete_pose(tmp_path, det_model, pose_model, reference_image, make_frame):
    video = _write_video(tmp_path / "drive.mp4", [make_frame()])
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoseAlignmentWarning)
        assert _run("--ref_name", reference_image, "--source_video_paths", video, "--saved_pose_dir",
                    tmp_path / "o", "--det_model", det_model, "--pose_model", pose_model) == 0


def test_the_manifest_vouches_for_the_pose_images_and_a_redraw_renews_it(tmp_path, det_model, pose_model,
                                                                          reference_image, make_frame):
    from diffsynth.data.pose_folder import list_pose_frames, read_pose_clip

    video = _write_video(tmp_path / "drive.mp4", [make_frame(), make_frame()])
    out = tmp_path / "poses"
    assert _run("--ref_name", reference_image, "--source_video_paths", video, "--saved_pose_dir", out,
                "--det_model", det_model, "--pose_model", pose_model) == 0
    hashes = json.loads((out / ".run_align_pose.json").read_text())["sha256"]
    assert sorted(hashes) == ["0000.jpg", "0001.jpg", "pose.jpg"]
    cv2.imwrite(str(out / "00002.jpg"), make_frame())                 # not listed: not a frame
    assert [p.name for p in list_pose_frames(out)] == ["0000.jpg", "0001.jpg"]
    cv2.imwrite(str(out / "0001.jpg"), make_frame())                  # edited by hand: refused, named
    with pytest.raises(ValueError, match="0001.jpg differs"):
        read_pose_clip(out, 32, 32)
    document = json.loads((out / "poses.json").read_text())
    document["frames"][0]["aligned"]["body"][0] = None                # the supported edit: poses.json + redraw
    (out / "poses.json").write_text(json.dumps(document))
    assert redraw_from_json(out / "poses.json") == 2
    assert read_pose_clip(out, 32, 32).dwpose_data.shape[1] == 2


def test_a_centre_crop_that_cuts_the_person_out_says_so(tmp_path, det_model, pose_model, make_frame, monkeypatch,
                                                        capsys):
    from diffsynth.pose import extract

    real = extract.create_backend

    def bright_only(*args, **kwargs):    # the stand-in pose model always finds someone: find only bright figures
        backend = real(*args, **kwargs)
        estimate = backend.estimate_image
        backend.estimate_image = lambda image: estimate(image) if image.max() > 200 else FramePose(None)
        return backend
    monkeypatch.setattr(extract, "create_backend", bright_only)
    wide = np.full((720, 2400, 3), 40, np.uint8)
    wide[:, :640] = cv2.resize(make_frame(), (640, 960))[:720]        # the person on the left, the centre empty
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    video = _write_video(tmp_path / "drive.mp4", [make_frame()])
    args = ("--ref_name", tmp_path / "wide.png", "--source_video_paths", video, "--det_model", det_model,
            "--pose_model", pose_model, "--canvas", "480x720")
    assert _run(*args, "--saved_pose_dir", tmp_path / "crop", "--resize", "crop") == 1
    assert "--resize crop cut the person out" in capsys.readouterr().err
    assert _run(*args, "--saved_pose_dir", tmp_path / "pad", "--resize", "pad") == 0
