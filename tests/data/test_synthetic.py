"""The synthetic mannequin clips' bystander: a second, still figure behind the moving one, absent from the poses."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from diffsynth.demo.synthetic import CLIP_FRAMES, make_clip, make_example, render, write_dataset

SEEDS = (3, 100_001)


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_bystander_is_behind_the_moving_figure_and_not_in_its_poses(seed):
    pair = make_clip(seed, num_frames=6, bystander=True)
    alone = render(pair.body, pair.motion, pair.appearance, range(6))      # the same mover, no bystander
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
    pair = make_example(100_002, bystander=True)
    clip = pair.clip
    alone = render(clip.body, clip.motion, clip.appearance, range(CLIP_FRAMES))
    masks = [cv2.resize(m.astype(np.uint8), (48, 64), interpolation=cv2.INTER_AREA) > 0 for m in alone.masks[:9]]
    assert all(np.array_equal(a, b) for a, b in zip(masks, pair.masks))
    reference = cv2.resize(alone.frames[pair.reference_index], (48, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(reference.astype(int) - pair.reference.astype(int)).max(-1).__gt__(30).sum() > 30


def test_a_two_figure_clip_keeps_the_movers_body_clothes_and_dance():
    alone, pair = make_clip(5, num_frames=1), make_clip(5, num_frames=1, bystander=True)
    assert alone.body == pair.body and alone.appearance == pair.appearance
    assert alone.motion.params == pair.motion.params


def test_write_dataset_gives_the_chosen_seeds_a_bystander(tmp_path):
    write_dataset(tmp_path, [0, 1], bystander_seeds={1})
    metas = {s: json.loads((tmp_path / f"clip_{s:05d}" / "meta.json").read_text()) for s in (0, 1)}
    assert metas[1]["source"].endswith("seed 1 with a bystander") and metas[0]["source"].endswith("seed 0")
    frame = cv2.imread(str(tmp_path / "clip_00001" / "frames" / "000000.jpg"))[..., ::-1]
    pair = make_clip(1, num_frames=1, bystander=True)
    alone = render(pair.body, pair.motion, pair.appearance, [0])
    error = lambda image: np.abs(frame.astype(int) - image.frames[0].astype(int)).mean()  # noqa: E731
    assert error(pair) < 5 and error(pair) < error(alone) / 2     # a JPEG of the two-figure frame


def test_the_mover_crosses_the_frame_past_the_bystander():
    """Where a figure stands in the reference must not say which one moves: the mover walks across 0.6-0.7 of the
    width, either way, and the bystander stands where the mover passes at a uniformly random moment (so, like the
    mover in a reference frame, anywhere on the path)."""
    directions, places = set(), []
    for seed in range(60):
        clip = make_clip(seed, num_frames=1, bystander=True)
        start, end = clip.motion.root_x, clip.motion.root_x + clip.motion.drift * (CLIP_FRAMES - 1)
        assert 0.6 - 1e-9 <= abs(end - start) <= 0.7 + 1e-9 and min(start, end) < 0.45 < 0.55 < max(start, end), seed
        x = clip.bystander.motion.root_x
        assert min(start, end) - 1e-9 <= x <= max(start, end) + 1e-9 and clip.bystander.motion.drift == 0.0, seed
        places.append((x - start) / (end - start))        # 0: where the mover starts, 1: where it ends
        directions.add(end > start)
    assert directions == {True, False}
    assert np.histogram(places, bins=3, range=(0, 1))[0].min() >= 10, places   # all along the path, not the middle
