"""The pose folder round trip: draw known poses -> write them as run_align_pose.py does -> read -> the tensors the
pipeline gets. A colour-order swap, a text sort of the frames or a swapped panel must each fail a test here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffsynth.data.images import image_to_tensor, to_rgb_uint8
from diffsynth.data.pose_folder import (REFERENCE_POSE_FILE, comparison_panels, frame_file_name, list_pose_frames,
                                        read_pose_clip, select_frames)
from diffsynth.inference import animate_item
from diffsynth.pose.draw import COLORS, draw_pose, write_image
from diffsynth.pose.keypoints import Pose

CANVAS_H, CANVAS_W = 96, 64
COUNT = 12


def nose_pose(x: float) -> Pose:
    """Only the nose (body point 0), drawn with COLORS[0], at horizontal position x (normalised)."""
    pose = Pose.empty()
    pose.body[0] = (x, 0.5)
    pose.body_valid[0] = True
    return pose


def nose_x(i: int) -> float:
    return 0.1 + 0.06 * i


def write_pose_folder(folder, names):
    """Frame i shows the nose at nose_x(i); the reference pose has it at 0.5 (what run_align_pose writes)."""
    folder.mkdir()
    write_image(folder / REFERENCE_POSE_FILE, draw_pose(nose_pose(0.5), CANVAS_W, CANVAS_H))
    for i, name in enumerate(names):
        write_image(folder / name, draw_pose(nose_pose(nose_x(i)), CANVAS_W, CANVAS_H))
    return folder


def brightest_column(frame: torch.Tensor) -> int:
    """Column of the drawn joint in a [3, H, W] pose frame."""
    return int(frame.sum(dim=(0, 1)).argmax())


@pytest.fixture(params=["tool", "unpadded"])
def pose_dir(request, tmp_path):
    names = ([frame_file_name(i, COUNT) for i in range(COUNT)] if request.param == "tool"
             else [f"{i}.jpg" for i in range(COUNT)])                # 10.jpg, 11.jpg sort before 2.jpg as text
    return write_pose_folder(tmp_path / request.param, names)


def test_frames_are_read_in_numeric_order(pose_dir):
    clip = read_pose_clip(pose_dir, CANVAS_H, CANVAS_W, num_frames=None)
    assert [int(p.stem) for p in clip.files] == list(range(COUNT))
    columns = [brightest_column(clip.dwpose_data[:, i]) for i in range(COUNT)]
    expected = [round(nose_x(i) * CANVAS_W) for i in range(COUNT)]
    assert all(abs(c - e) <= 2 for c, e in zip(columns, expected)), (columns, expected)


def test_pose_tensors_are_rgb_as_the_released_model_saw_them(pose_dir):
    """COLORS[0] = (255, 0, 0) is written into the BGR array OpenCV saves, so the pose image shows it blue and the
    [3, F, H, W] tensor (RGB) has it in channel 2. Reading with OpenCV's order would put it in channel 0."""
    assert COLORS[0] == (255, 0, 0)
    clip = read_pose_clip(pose_dir, CANVAS_H, CANVAS_W, num_frames=None)
    x, y = round(nose_x(3) * CANVAS_W), CANVAS_H // 2
    red, green, blue = clip.dwpose_data[:, 3, y, x].tolist()
    assert blue > 200 and red < 60 and green < 60, (red, green, blue)
    r, g, b = clip.random_ref_dwpose[y, CANVAS_W // 2].tolist()
    assert b > 200 and r < 60 and g < 60
    assert clip.random_ref_dwpose.dtype == torch.uint8 and clip.dwpose_data.dtype == torch.float32


def test_a_window_of_frames_follows_the_shared_rule(pose_dir):
    clip = read_pose_clip(pose_dir, 32, 32, num_frames=5, frame_interval=2, seed=4)
    indices = [int(p.stem) for p in clip.files]
    assert indices == select_frames(COUNT, 5, 2, np.random.default_rng(4))
    assert clip.dwpose_data.shape == (3, 5, 32, 32) and clip.random_ref_dwpose.shape == (32, 32, 3)


def test_user_files_and_the_reference_are_not_frames(pose_dir):
    (pose_dir / "notes.jpg").write_bytes(b"x")
    (pose_dir / "poses.json").write_text("{}")
    frames = list_pose_frames(pose_dir)
    assert len(frames) == COUNT and REFERENCE_POSE_FILE not in {p.name for p in frames}


def test_missing_reference_or_frames_name_the_tool(tmp_path):
    with pytest.raises(FileNotFoundError, match="run_align_pose"):
        read_pose_clip(tmp_path / "absent", 32, 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="run_align_pose"):
        read_pose_clip(empty, 32, 32)


def test_panels_are_reference_pose_generated():
    reference = np.full((20, 10, 3), (200, 10, 10), np.uint8)
    poses = torch.zeros(3, 2, 20, 10)
    poses[1] = 150                                                    # green poses
    generated = [np.full((20, 10, 3), (5, 5, 220), np.uint8)] * 2     # blue frames
    panels = comparison_panels(Image.fromarray(reference), poses, generated)
    assert len(panels) == 2 and panels[0].shape == (20, 30, 3)
    left, middle, right = panels[0][:, :10], panels[0][:, 10:20], panels[0][:, 20:]
    assert np.array_equal(left, reference)
    assert (middle == (0, 150, 0)).all()
    assert np.array_equal(right, generated[0])


def test_inference_hands_the_pipeline_the_folder_as_read(pose_dir, tmp_path):
    """animate_item -> pipeline arguments -> saved panels, with a pipeline stand-in that returns its pose frames."""
    received = {}

    class Pipeline:
        """Called with keyword arguments, or through `generate(request, ...)`: records them, returns the poses."""

        def __call__(self, **kwargs):
            received.update(kwargs)
            poses = kwargs["dwpose_data"]
            return [Image.fromarray(poses[:, i].permute(1, 2, 0).to(torch.uint8).numpy())
                    for i in range(poses.shape[1])]

        def generate(self, request, **kwargs):
            return self(num_frames=request.num_frames, **kwargs)
    pipeline = Pipeline()
    Image.fromarray(np.full((50, 40, 3), (30, 200, 30), np.uint8)).save(tmp_path / "ref.png")
    out = animate_item(pipeline, str(tmp_path / "ref.png"), str(pose_dir), str(tmp_path / "out.mp4"),
                       height=CANVAS_H, width=CANVAS_W, max_frames=None)
    expected = read_pose_clip(pose_dir, CANVAS_H, CANVAS_W, num_frames=None)
    assert torch.equal(received["dwpose_data"], expected.dwpose_data)
    assert torch.equal(received["random_ref_dwpose"], expected.random_ref_dwpose)
    assert received["num_frames"] == COUNT
    assert np.asarray(received["input_image"]).mean(axis=(0, 1)).round().tolist() == [30, 200, 30]
    import imageio.v2 as imageio
    frames = imageio.mimread(out)
    assert len(frames) == COUNT and frames[0].shape[:2] == (CANVAS_H, 3 * CANVAS_W)
    left = frames[0][:, :CANVAS_W].reshape(-1, 3).mean(0)
    assert left[1] > 150 and left[0] < 80                             # the green reference sits on the left


@pytest.mark.parametrize("n, frames, stride, expected", [
    (3, 5, 1, [0, 1, 2, 2, 2]),                  # short: padded with the last frame
    (5, 5, 1, [0, 1, 2, 3, 4]),                  # exactly one window
    (8, 5, 2, [0, 1, 2, 3, 4]),                  # short for stride 2 (a window spans 9): the stride shrinks
    (9, 5, 2, [0, 2, 4, 6, 8]),                  # N = span: one start
])
def test_select_frames_edges(n, frames, stride, expected):
    assert select_frames(n, frames, stride, np.random.default_rng(0)) == expected


def test_select_frames_draws_every_start_from_the_seed():
    starts = {select_frames(150, 81, 1, np.random.default_rng(s))[0] for s in range(1000)}
    assert starts == set(range(0, 150 - 81 + 1))                     # every start that fits, the last one too
    assert select_frames(150, 81, 1, np.random.default_rng(3)) == select_frames(150, 81, 1, np.random.default_rng(3))
    window = select_frames(1000, 81, 3, np.random.default_rng(1))
    assert np.all(np.diff(window) == 3) and window[-1] < 1000
    assert select_frames(150, 81, 1) == list(range(81))              # no rng: the first window
    # A strided window needs stride * (frames - 1) + 1 frames, not stride * frames: 161 frames hold 81 at stride 2
    # (counting the span as 162 spread them at stride 1, ignoring the frame interval).
    assert {select_frames(162, 81, 2, np.random.default_rng(s))[0] for s in range(200)} == {0, 1}
    assert select_frames(161, 81, 2) == list(range(0, 161, 2))
    with pytest.raises(ValueError, match="no frames"):
        select_frames(0, 5, 1)


# ------------------------------------------------------------------------------------- image decoding
def test_sixteen_bit_and_float_images_are_scaled_not_clipped():
    ramp16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)           # 0 .. 63000
    image = Image.fromarray(ramp16)
    assert image.mode.startswith("I")
    rgb = to_rgb_uint8(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 8, 3)
    expected = np.round(ramp16 / 65535 * 255).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert (rgb == 255).mean() < 0.05                                         # PIL's convert("RGB") gave 98% white
    floats = Image.fromarray((np.arange(64, dtype=np.float32).reshape(8, 8) / 63))
    assert floats.mode == "F"
    assert to_rgb_uint8(floats)[..., 1].max() == 255 and to_rgb_uint8(floats)[0, 1, 0] == round(255 / 63)
    eight_bit_in_i = Image.fromarray(np.full((4, 4), 200, np.int32))          # "I" holding 8-bit values
    assert (to_rgb_uint8(eight_bit_in_i) == 200).all()


def test_sixteen_bit_png_reference_reaches_the_model_scaled(tmp_path):
    ramp16 = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 256)
    Image.fromarray(ramp16).save(tmp_path / "ref16.png")
    with Image.open(tmp_path / "ref16.png") as image:
        tensor = image_to_tensor(image, 16, 16)
    assert tensor.shape == (1, 3, 16, 16)
    assert -1.0 <= tensor.min() < -0.9 and 0.9 < tensor.max() <= 1.0
    assert (tensor > 0.99).float().mean() < 0.05


def manifest_folder(tmp_path):
    """A pose folder with the manifest run_align_pose writes: its files listed, its images' SHA-256 recorded."""
    from diffsynth.data.pose_folder import MANIFEST_FILE
    from diffsynth.data.safe_write import Manifest

    names = [frame_file_name(i, COUNT) for i in range(COUNT)]
    folder = tmp_path / "poses"
    folder.mkdir()
    manifest = Manifest(folder, MANIFEST_FILE)
    manifest.reserve([REFERENCE_POSE_FILE, *names])           # listed first, then written, then hashed
    write_pose_folder(tmp_path / "staging", names)
    for file in (tmp_path / "staging").iterdir():
        file.rename(folder / file.name)
    manifest.record_hashes([REFERENCE_POSE_FILE, *names])
    return folder


def test_a_folder_with_a_manifest_has_exactly_the_frames_it_lists(tmp_path):
    folder = manifest_folder(tmp_path)
    write_image(folder / "00005.jpg", draw_pose(nose_pose(0.9), CANVAS_W, CANVAS_H))   # a stray frame-like name
    write_image(folder / "2023.jpg", draw_pose(nose_pose(0.9), CANVAS_W, CANVAS_H))    # a user's photo
    clip = read_pose_clip(folder, CANVAS_H, CANVAS_W, num_frames=None)
    assert [p.name for p in clip.files] == [frame_file_name(i, COUNT) for i in range(COUNT)]
    assert [p.name for p in list_pose_frames(folder)] == [p.name for p in clip.files]


@pytest.mark.parametrize("damage", ["edited", "truncated", "deleted", "reference"])
def test_a_changed_frame_is_refused_naming_it(tmp_path, damage):
    folder = manifest_folder(tmp_path)
    name = REFERENCE_POSE_FILE if damage == "reference" else "0003.jpg"
    if damage == "deleted":
        (folder / name).unlink()
    elif damage == "truncated":
        (folder / name).write_bytes((folder / name).read_bytes()[:100])
    else:
        write_image(folder / name, draw_pose(nose_pose(0.9), CANVAS_W, CANVAS_H))
    with pytest.raises(ValueError, match=f"{name}.*(differs|missing).*SHA-256") as caught:
        read_pose_clip(folder, CANVAS_H, CANVAS_W, num_frames=None)
    assert str(folder / name) in str(caught.value) and "\n" not in str(caught.value)


def test_an_unreadable_frame_in_a_folder_without_a_manifest_is_named(pose_dir):
    name = sorted(p.name for p in pose_dir.glob("*.jpg") if p.name != REFERENCE_POSE_FILE)[0]
    (pose_dir / name).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=f"cannot read image {pose_dir / name}"):
        read_pose_clip(pose_dir, CANVAS_H, CANVAS_W, num_frames=None)
