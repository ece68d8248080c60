"""The synthetic mannequin clips' bystander: a second, still figure behind the moving one, absent from the poses."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from diffsynth.data.synthetic import make_clip, make_example, write_dataset

SEEDS = (3, 100_001)


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_bystander_is_behind_the_moving_figure_and_not_in_its_poses(seed):
    alone, pair = make_clip(seed, num_frames=6), make_clip(seed, num_frames=6, bystander=True)
    assert pair.bystander is not None and alone.bystander is None
    for i in range(6):
        assert np.array_equal(alone.pose_images[i], pair.pose_images[i])     # the poses are the mover's alone
        assert np.array_equal(alone.masks[i], pair.masks[i])
        inside = ~_grow(~alone.masks[i], 1)             # the mover's pixels away from its antialiased edge
        changed = np.any(alone.frames[i][inside] != pair.frames[i][inside], axis=-1)
        assert changed.mean() < 0.005, (i, int(changed.sum()))   # drawn in front (a stray pixel at a thin gap)
        added = np.abs(alone.frames[i].astype(int) - pair.frames[i].astype(int)).max(-1) > 30
        assert added.sum() > 150, (i, int(added.sum()))  # a whole figure more, not a few pixels


@pytest.mark.parametrize("seed", SEEDS)
def test_bystander_stands_still(seed):
    pair = make_clip(seed, num_frames=12, bystander=True)
    for i in (4, 8, 11):
        away = ~(_grow(pair.masks[0], 2) | _grow(pair.masks[i], 2))   # not covered by the mover in either frame
        assert np.array_equal(pair.frames[0][away], pair.frames[i][away]), i


def test_bystander_wears_other_colours_than_the_mover():
    for seed in range(20):
        clip = make_clip(seed, num_frames=1, bystander=True)
        mover, other = clip.appearance, clip.bystander.appearance
        assert np.linalg.norm(np.subtract(other.top, mover.top)) > 60, seed
        assert np.linalg.norm(np.subtract(other.top, mover.background)) > 60, seed


def test_a_two_figure_example_has_the_movers_masks_and_a_two_figure_reference():
    alone, pair = make_example(100_002), make_example(100_002, bystander=True)
    assert all(np.array_equal(a, b) for a, b in zip(alone.masks, pair.masks))
    assert np.array_equal(alone.reference_pose, pair.reference_pose)
    assert np.abs(alone.reference.astype(int) - pair.reference.astype(int)).max(-1).__gt__(30).sum() > 30


def test_write_dataset_gives_the_chosen_seeds_a_bystander(tmp_path):
    write_dataset(tmp_path, [0, 1], bystander_seeds={1})
    metas = {s: json.loads((tmp_path / f"clip_{s:05d}" / "meta.json").read_text()) for s in (0, 1)}
    assert metas[1]["source"].endswith("seed 1 with a bystander") and metas[0]["source"].endswith("seed 0")
    frame = cv2.imread(str(tmp_path / "clip_00001" / "frames" / "000000.jpg"))[..., ::-1]
    expected = make_clip(1, num_frames=1, bystander=True).frames[0]
    assert np.abs(frame.astype(int) - expected.astype(int)).mean() < 3    # JPEG of the two-figure frame


def test_bystander_stands_on_the_movers_path():
    """Nearness to the driving poses must not tell the two figures apart: the bystander stands where the mover
    passes (give or take 0.05 of the width), or beside a mover that stays put."""
    from diffsynth.data.synthetic import CLIP_FRAMES

    travelling = 0
    for seed in range(40):
        clip = make_clip(seed, num_frames=1, bystander=True)
        start, end = clip.motion.root_x, clip.motion.root_x + clip.motion.drift * (CLIP_FRAMES - 1)
        x = clip.bystander.motion.root_x
        if abs(end - start) >= 0.1:
            travelling += 1
            assert min(start, end) - 0.05 - 1e-9 <= x <= max(start, end) + 0.05 + 1e-9, seed
        else:
            assert 0.15 - 1e-9 <= abs(x - start) or x in (0.15, 0.85), seed
    assert travelling > 20
