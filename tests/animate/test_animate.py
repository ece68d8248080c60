"""diffsynth.animate's API (what the CLI and the web UI call): proportions, pipeline choice, pose cache, batches."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from diffsynth.animate import AnimateSettings, Animator, animate_batch, find_pairs, generation_size
from diffsynth.animate.poses import prepare_poses
from diffsynth.data import VideoData

from .conftest import landscape_photo, write_driving


def settings_for(pose_models, **changes) -> AnimateSettings:
    defaults = dict(models="tiny", resolution="3072", steps=2, det_model=pose_models[0], pose_model=pose_models[1])
    return AnimateSettings(**{**defaults, **changes})


class Reached(Exception):
    """Stops a generation once the reference image has reached the model."""


def reference_reaching_the_model(pipe, animator, photo, driving, out, monkeypatch) -> np.ndarray:
    """The reference image exactly as the pipeline turns it into the model's input ([-1, 1] -> uint8 RGB)."""
    from diffsynth.data.images import image_to_tensor

    seen = {}

    def encode_reference(input_image, height, width, num_frames, random_ref_dwpose):
        seen["image"] = image_to_tensor(input_image, height, width)   # the pipeline's own resize
        raise Reached
    monkeypatch.setattr(pipe, "encode_reference", encode_reference)
    with pytest.raises(Reached):
        animator.animate(photo, driving, out)
    return ((seen["image"][0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def disc_aspect(rgb: np.ndarray) -> float:
    """Width / height of the green disc."""
    ys, xs = np.nonzero((rgb[..., 1] > 150) & (rgb[..., 0] < 100) & (rgb[..., 2] < 100))
    return (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)


@pytest.mark.parametrize("resize, size, round_disc", [("pad", None, True), ("crop", (480, 832), True),
                                                       ("stretch", (480, 832), False)])
def test_a_landscape_circle_reaches_the_pipeline_as_a_circle(tmp_path, tiny_pipe, pose_models, monkeypatch,
                                                              driving, resize, size, round_disc):
    photo = tmp_path / "landscape.png"
    cv2.imwrite(str(photo), landscape_photo(1280, 720, disc_x=0.5))    # centred: the centre crop keeps it whole
    animator = Animator(settings_for(pose_models, resolution="480p", size=size, resize=resize), pipeline=tiny_pipe)
    seen = reference_reaching_the_model(tiny_pipe, animator, photo, driving, tmp_path / "o.mp4", monkeypatch)
    assert seen.shape[1::-1] == (size or (832, 464))          # 480p area, the photo's landscape shape
    if round_disc:
        assert disc_aspect(seen) == pytest.approx(1.0, abs=0.04)
    else:                                                      # the upstream behaviour, kept for comparison
        assert disc_aspect(seen) < 0.4


@pytest.mark.parametrize("photo_size, expected", [((1080, 1920), (464, 832)), ((1920, 1080), (832, 464)),
                                                  ((1000, 1000), (624, 624))])
def test_portrait_landscape_and_square_sizes(photo_size, expected):
    assert generation_size(*photo_size, AnimateSettings(models="tiny", resolution="480p")) == expected
    assert generation_size(*photo_size, AnimateSettings(models="tiny", resolution="720p"))[0] % 16 == 0


def test_long_videos_take_the_long_pipeline_and_report_progress(tmp_path, tiny_pipe, pose_models, photo,
                                                                driving):
    events = []
    settings = settings_for(pose_models, max_short_frames=4)          # 7 frames > 4: long-video pipeline
    result = Animator(settings, progress=events.append, pipeline=tiny_pipe).animate(photo, driving,
                                                                                   tmp_path / "long.mp4")
    assert result.pipeline == "long" and result.frames == 5 and not result.audio
    assert len(VideoData(video_file=str(result.video))) == 5
    steps = [(e.done, e.total) for e in events if e.stage == "generate"]
    assert steps == [(0, 2), (1, 2), (2, 2)]
    assert [e.stage for e in events][:4] == ["poses", "poses", "encode", "generate"] and events[-1].stage == "done"
    assert "decode" in [e.stage for e in events]
    assert [e.fraction for e in events if e.stage == "write"][-1] == 1.0


def test_poses_are_reused_until_an_input_changes(tmp_path, pose_models, photo, driving):
    folder = tmp_path / "clip.poses"
    args = dict(det_model=pose_models[0], pose_model=pose_models[1])
    first = prepare_poses(photo, driving, folder, (64, 32), "pad", **args)
    stamp = (folder / "0000.jpg").stat().st_mtime_ns
    assert not first.reused and first.frames == 7 and first.reference_image == folder / "reference.png"
    assert prepare_poses(photo, driving, folder, (64, 32), "pad", **args).reused
    assert (folder / "0000.jpg").stat().st_mtime_ns == stamp
    (folder / "notes.txt").write_text("mine")                          # a user's file in the folder
    assert not prepare_poses(photo, driving, folder, (64, 32), "crop", **args).reused      # settings changed
    cv2.imwrite(str(photo), landscape_photo(300, 180))                 # the photo changed
    again = prepare_poses(photo, driving, folder, (64, 32), "crop", **args)
    assert not again.reused and (folder / "notes.txt").read_text() == "mine"
    assert prepare_poses(photo, driving, folder, (64, 32), "crop", **args).reused


def test_a_folder_this_tool_did_not_write_is_refused(tmp_path, pose_models, photo, driving):
    folder = tmp_path / "clip.poses"
    folder.mkdir()
    (folder / "0000.jpg").write_bytes(b"my holiday photo")
    with pytest.raises(FileExistsError, match="not written by diffsynth"):
        prepare_poses(photo, driving, folder, (64, 32), det_model=pose_models[0], pose_model=pose_models[1])
    assert (folder / "0000.jpg").read_bytes() == b"my holiday photo"


def test_a_batch_runs_every_pair_and_survives_a_failure(tmp_path, pose_models, photo, driving):
    photos, videos = tmp_path / "photos", tmp_path / "videos"
    photos.mkdir()
    videos.mkdir()
    cv2.imwrite(str(photos / "a.png"), landscape_photo())
    (photos / "b.png").write_bytes(b"not an image")
    write_driving(videos / "one.mp4")
    write_driving(videos / "two.mp4", frames=5)
    assert len(find_pairs(photos, videos)) == 4
    events = []
    batch = animate_batch(photos, videos, tmp_path / "out", settings_for(pose_models), events.append,
                          preview_only=True)
    assert sorted(r.preview.name for r in batch.done) == ["a_one_pose_preview.mp4", "a_two_pose_preview.mp4"]
    assert len(batch.failed) == 2 and all("b.png" in why for _, _, why in batch.failed)
    assert batch.lines()[0] == "2 of 4 pairs done"
    assert {e.items for e in events} == {4} and {e.item for e in events} == {1, 2, 3, 4}
    assert len(VideoData(video_file=str(batch.done[0].preview))) in (5, 7)


def test_torchrun_ranks_split_the_pairs(tmp_path, pose_models, photo, driving, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    done = Animator(settings_for(pose_models)).animate_batch(
        [(photo, tmp_path / f"missing{i}.mp4") for i in range(3)], tmp_path / "out", preview_only=True)
    assert [drv.name for _, drv, _ in done.failed] == ["missing1.mp4"]     # rank 1 of 2 takes pair 1 only


def pose_args(pose_models):
    return dict(det_model=pose_models[0], pose_model=pose_models[1])


def test_the_pose_cache_takes_only_its_own_unchanged_frames(tmp_path, pose_models, photo, driving):
    folder = tmp_path / "clip.poses"
    first = prepare_poses(photo, driving, folder, (64, 32), "pad", **pose_args(pose_models))
    (folder / "00005.jpg").write_bytes((folder / "0000.jpg").read_bytes())   # a stray frame-like file
    (folder / "2023.jpg").write_bytes((folder / "0001.jpg").read_bytes())    # a user's photo kept beside
    again = prepare_poses(photo, driving, folder, (64, 32), "pad", **pose_args(pose_models))
    assert again.reused and again.frames == first.frames == 7
    cv2.imwrite(str(folder / "0003.jpg"), np.zeros((32, 64, 3), np.uint8))   # an edited frame: extracted again
    edited = prepare_poses(photo, driving, folder, (64, 32), "pad", **pose_args(pose_models))
    assert not edited.reused and cv2.imread(str(folder / "0003.jpg")).max() > 0
    assert (folder / "2023.jpg").is_file() and (folder / "00005.jpg").is_file()   # user files untouched


def test_a_pose_folder_that_is_a_symlink_is_not_written_through(tmp_path, pose_models, photo, driving):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "clip.poses").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="clip.poses is a symbolic link"):
        prepare_poses(photo, driving, tmp_path / "clip.poses", (64, 32), **pose_args(pose_models))
    assert list(elsewhere.iterdir()) == []


def test_an_interrupted_run_leaves_a_folder_the_next_run_adopts(tmp_path, pose_models, photo, driving,
                                                               monkeypatch):
    from diffsynth.pose import extract

    folder = tmp_path / "clip.poses"
    real, calls = extract.write_image, []

    def killed_at_the_third_frame(path, image, replace=True):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real(path, image, replace=replace)
    monkeypatch.setattr(extract, "write_image", killed_at_the_third_frame)
    with pytest.raises(KeyboardInterrupt):
        prepare_poses(photo, driving, folder, (64, 32), **pose_args(pose_models))
    monkeypatch.undo()
    (folder / ".0004.0123456789ab.tmp.jpg").write_bytes(b"half")       # what a kill -9 mid-write leaves
    assert prepare_poses(photo, driving, folder, (64, 32), **pose_args(pose_models)).frames == 7
    assert not (folder / ".0004.0123456789ab.tmp.jpg").exists()


def test_only_leftovers_of_a_killed_run_without_a_manifest_are_adopted(tmp_path, pose_models, photo, driving):
    folder = tmp_path / "clip.poses"
    folder.mkdir()
    (folder / "..run_align_pose.a1b2c3d4e5f6.tmp.json").write_text("{")    # killed while writing the manifest
    assert prepare_poses(photo, driving, folder, (64, 32), **pose_args(pose_models)).frames == 7
    assert not (folder / "..run_align_pose.a1b2c3d4e5f6.tmp.json").exists()
    other = tmp_path / "other.poses"
    other.mkdir()
    (other / ".0001.a1b2c3d4e5f6.tmp.jpg").write_bytes(b"half")
    (other / "2023.jpg").write_bytes(b"my photo")
    with pytest.raises(FileExistsError, match=r"not written by diffsynth \(2023.jpg;"):
        prepare_poses(photo, driving, other, (64, 32), **pose_args(pose_models))
    assert (other / "2023.jpg").read_bytes() == b"my photo"


def test_inputs_sharing_a_stem_get_their_own_outputs(tmp_path, pose_models, driving):
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "me.jpg"), landscape_photo())
    cv2.imwrite(str(photos / "me.png"), landscape_photo(disc_x=0.5))
    cv2.imwrite(str(photos / "you.png"), landscape_photo())
    batch = animate_batch(photos, driving, tmp_path / "out", settings_for(pose_models), preview_only=True)
    assert not batch.failed
    assert sorted(r.preview.name for r in batch.done) == ["me-jpg_dance_pose_preview.mp4",
                                                          "me-png_dance_pose_preview.mp4", "you_dance_pose_preview.mp4"]
    assert len({r.pose_dir for r in batch.done}) == 3


def test_a_batch_whose_names_would_still_collide_is_refused_before_any_work(tmp_path, pose_models, photo):
    from diffsynth.animate.names import batch_clip_names

    pairs = [(tmp_path / "a_b.png", tmp_path / "c.mp4"), (tmp_path / "a.png", tmp_path / "b_c.mp4")]
    with pytest.raises(ValueError, match=r"a_b.png x c.mp4 and a.png x b_c.mp4 would both write a_b_c.mp4"):
        Animator(settings_for(pose_models)).animate_batch(pairs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="would both write"):                  # one file on macOS and Windows
        batch_clip_names([(tmp_path / "Me.png", tmp_path / "d.mp4"), (tmp_path / "me.png", tmp_path / "d.mp4")])


def test_long_input_names_are_shortened_apart(tmp_path):
    from diffsynth.animate.names import clip_name

    first, second = "é" * 150 + "1.jpg", "é" * 150 + "2.jpg"
    names = {clip_name(tmp_path / first, tmp_path / ("v" * 300 + ".mp4")),
             clip_name(tmp_path / second, tmp_path / ("v" * 300 + ".mp4"))}
    assert len(names) == 2
    for name in names:
        assert len(f"{name[:-4]}_pose_preview.mp4".encode()) < 255 and name.endswith(".mp4")
    assert clip_name(tmp_path / "me.jpg", tmp_path / "dance.mp4") == "me_dance.mp4"


@pytest.mark.parametrize("damaged", ["photo", "video"])
def test_the_pose_cache_names_a_damaged_input_in_one_line(tmp_path, pose_models, photo, driving, damaged):
    bad = tmp_path / ("bad.jpg" if damaged == "photo" else "bad.mp4")
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 200 if damaged == "photo" else b"\0\0\0\x18ftypmp42" + b"\1" * 900)
    inputs = (bad, driving) if damaged == "photo" else (photo, bad)
    with pytest.raises(ValueError) as caught:
        prepare_poses(*inputs, tmp_path / "clip.poses", (64, 32), **pose_args(pose_models))
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_defaults_fit_the_models():
    """The release runs at upstream's 480p / 50 steps / cfg 1.5; --models tiny at the demo model's own size and
    schedule (64x48, 10 steps, cfg 1: what it was trained and evaluated at); what is given is kept."""
    from diffsynth.animate.settings import AnimateSettings
    from diffsynth.loading.release import DEMO_HEIGHT, DEMO_INFERENCE, DEMO_WIDTH

    release = AnimateSettings()
    assert (release.resolution, release.steps, release.cfg) == ("480p", 50, 1.5)
    tiny = AnimateSettings(models="tiny")
    assert (tiny.area(), tiny.steps, tiny.cfg) == (DEMO_HEIGHT * DEMO_WIDTH, DEMO_INFERENCE["num_inference_steps"],
                                                   DEMO_INFERENCE["cfg_scale"])
    given = AnimateSettings(models="tiny", resolution="480p", steps=3, cfg=2.0)
    assert (given.resolution, given.steps, given.cfg) == ("480p", 3, 2.0)
    assert tiny.with_(seed=3).steps == tiny.steps


@pytest.mark.parametrize("field", ["reference", "driving", "canvas", "resize", "det_model", "pose_model", "smooth"])
def test_every_field_of_the_pose_cache_key_invalidates_it(tmp_path, pose_models, photo, driving, field):
    """Changing any one input the pose folder is made from makes `prepare_poses` extract again, and changing it back
    (or nothing) reuses the folder. (Dropping a field from `cache_key` fails its case.)"""
    import shutil

    folder = tmp_path / "clip.poses"
    base = dict(reference=photo, driving=driving, canvas=(64, 32), resize="pad", det_model=pose_models[0],
                pose_model=pose_models[1], smooth=False)

    def run(**changes):
        a = {**base, **changes}
        return prepare_poses(a["reference"], a["driving"], folder, a["canvas"], a["resize"], "dwpose",
                             a["det_model"], a["pose_model"], a["smooth"])

    assert not run().reused and run().reused
    other = {"canvas": (48, 32), "resize": "stretch", "smooth": True}
    if field == "reference":
        changed = tmp_path / "other_photo.png"
        cv2.imwrite(str(changed), landscape_photo(300, 180))
    elif field == "driving":
        changed = write_driving(tmp_path / "other_dance.mp4", frames=8)
    elif field in ("det_model", "pose_model"):
        changed = tmp_path / f"copy_of_{field}.onnx"
        shutil.copy(base[field], changed)
    else:
        changed = other[field]
    assert not run(**{field: changed}).reused
    assert run(**{field: changed}).reused


@pytest.mark.parametrize("stride, max_frames, expected", [(2, 81, [0, 2, 4, 6, 8]), (1, 5, [0, 1, 2, 3, 4]),
                                                          (3, 81, [0, 3, 6, 9, 12]), (1, 81, list(range(13)))])
def test_animate_picks_frames_by_the_one_window_rule(tmp_path, tiny_pipe, pose_models, photo, stride, max_frames,
                                                     expected, monkeypatch):
    """Every `stride`-th driving frame from the first, at most `max_frames`, cut to 4k + 1 for the short pipeline:
    `select_frames` without a seed, the rule the example scripts and training use with one. (The stand-in pose
    model draws the same pose on every frame, so the frames read are checked, not their pixels.)"""
    import diffsynth.animate.run as run
    from diffsynth.data.pose_folder import list_pose_frames

    driving = write_driving(tmp_path / "fifteen.mp4", frames=15)
    read = {}

    def read_pose_frames(pose_dir, chosen, height, width):
        read["indices"] = [list_pose_frames(pose_dir).index(path) for path in chosen]
        raise Reached
    monkeypatch.setattr(run, "read_pose_frames", read_pose_frames)
    animator = Animator(settings_for(pose_models, stride=stride, max_frames=max_frames), pipeline=tiny_pipe)
    with pytest.raises(Reached):
        animator.animate(photo, driving, tmp_path / "o.mp4")
    assert read["indices"] == expected
