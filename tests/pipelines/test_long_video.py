"""WanUniAnimateLongVideoPipeline: window schedule, one-window equivalence, the windowed loop, reproducibility."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffsynth.pipelines import WanUniAnimateLongVideoPipeline, WanUniAnimateVideoPipeline, context_windows
from diffsynth.pipelines.units import dit_step
from diffsynth.schedulers import FlowMatchScheduler
from diffsynth.tiny import build_tiny_models

H, W = 32, 32


@pytest.mark.parametrize("T, expected", [
    (38, [(0, 21), (17, 38)]),                       # the bundled 150-frame source video (spec 3.6)
    (21, [(0, 21)]), (10, [(0, 10)]),
    (60, [(0, 21), (17, 38), (34, 55), (39, 60)]),
])
def test_windows_follow_the_upstream_schedule(T, expected):
    assert context_windows(T) == expected


def test_windows_cover_every_frame_and_private_frames_are_covered_by_a_neighbour():
    for T in range(1, 120):
        windows = context_windows(T)
        assert windows[0][0] == 0 and windows[-1][1] == T
        assert all(e - s == min(T, 21) for s, e in windows)
        written = set(range(*windows[0]))
        for s, e in windows[1:]:
            written |= set(range(s + 2, e))
        assert written == set(range(T)), T
    for size, overlap in [(4, 4), (5, 1), (2, 1)]:
        with pytest.raises(ValueError, match="context_overlap"):
            context_windows(30, size, overlap)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_tiny_models(str(tmp_path_factory.mktemp("tok")), seed=5)


def make(cls, models):
    return cls.from_models(**vars(models), device="cpu", torch_dtype=torch.float32)


def inputs(frames, seed=0):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    pose = torch.from_numpy(rng.integers(0, 255, (3, frames, H, W))).float()
    ref_pose = torch.from_numpy(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return dict(prompt="dance", negative_prompt="", input_image=image, dwpose_data=pose, random_ref_dwpose=ref_pose,
                height=H, width=W, num_frames=frames, cfg_scale=1.5, num_inference_steps=2, seed=3, tiled=False,
                progress_bar_cmd=lambda x: x)


def frames_of(images):
    return np.stack([np.asarray(f) for f in images])


def test_one_window_equals_the_short_pipeline_with_the_private_noise(models, monkeypatch):
    args = inputs(9)
    long_out = frames_of(make(WanUniAnimateLongVideoPipeline, models)(**args))
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(1, 16, 3, H // 8, W // 8, generator=gen)
    noise[:, :, :2] = torch.randn(1, 16, 2, H // 8, W // 8, generator=gen)   # window 0's private frames
    short = make(WanUniAnimateVideoPipeline, models)
    monkeypatch.setattr(short, "initial_latents", lambda *a, **k: noise.clone())
    assert np.array_equal(long_out, frames_of(short(**args)))


@torch.no_grad()
def reference_long(m, args, context_size, overlap, step_list=None):
    """The windowed loop of upstream spec 3.6, written out with the short pipeline's encoders (seeded privates).
    With `step_list`: that explicit schedule and the renoise sampler (x0 re-noised to the next sigma with one fresh
    draw per step for the whole video, and each later window's private frames drawing their own noise after it)."""
    pipe = make(WanUniAnimateVideoPipeline, m)
    T = (args["num_frames"] - 1) // 4 + 1
    gen = torch.Generator().manual_seed(args["seed"])
    latents = torch.randn(1, 16, T, H // 8, W // 8, generator=gen)
    windows = context_windows(T, context_size, overlap)
    first = [torch.randn(1, 16, 2, H // 8, W // 8, generator=gen) for _ in windows]
    ctx, ctx_neg = pipe.encode_prompts(args["prompt"], args["negative_prompt"], args["cfg_scale"])
    clip, y = pipe.encode_reference(args["input_image"], H, W, 4 * context_size - 3, args["random_ref_dwpose"])
    poses = [pipe.encode_pose_video(args["dwpose_data"][:, 4 * s: 4 * e - 3]) for s, e in windows]
    sched = FlowMatchScheduler(shift=5.0)
    if step_list is None:
        sched.set_timesteps(args["num_inference_steps"])
    else:
        sched.set_timesteps(None, denoising_step_list=step_list)
    for i, t in enumerate(sched.timesteps):
        acc, cnt = torch.zeros_like(latents), torch.zeros(1, 1, T, 1, 1)
        sigma, sigma_next = sched.sigmas[i], (sched.sigmas[i + 1] if i + 1 < len(sched.sigmas) else 0.0)
        fresh = torch.randn(latents.shape, generator=gen) if step_list and i + 1 < len(sched.sigmas) else None
        for k, (s, e) in enumerate(windows):
            inp = latents[:, :, s:e].clone()
            inp[:, :, 0:2] = first[k]
            pos = dit_step(m.dit, inp, t[None], ctx, clip, y, poses[k])
            neg = dit_step(m.dit, inp, t[None], ctx_neg, clip, y, None) if args["cfg_scale"] != 1 else pos
            v = neg + args["cfg_scale"] * (pos - neg)
            if step_list is None:
                out = inp + v * (sigma_next - sigma)
            else:
                x0 = inp - sigma * v
                if fresh is None:
                    out = x0
                else:
                    eps = fresh[:, :, s:e].clone()
                    if k > 0:
                        eps[:, :, 0:2] = torch.randn(1, 16, 2, H // 8, W // 8, generator=gen)
                    out = (1 - sigma_next) * x0 + sigma_next * eps
            if k == 0:
                acc[:, :, s:e] += out
                cnt[:, :, s:e] += 1
            else:
                acc[:, :, s + 2:e] += out[:, :, 2:]
                cnt[:, :, s + 2:e] += 1
            first[k] = out[:, :, 0:2]
        latents = acc / cnt
    return frames_of(pipe.decode(latents, False, (30, 52), (15, 26)))


def test_windowed_loop_matches_the_spec(models):
    args = inputs(29)                                 # T = 8 latent frames; windows (0,5) and (3,8)
    got = frames_of(make(WanUniAnimateLongVideoPipeline, models)(**args, context_size=5, context_overlap=2))
    expected = reference_long(models, args, context_size=5, overlap=2)
    assert got.shape == (29, H, W, 3)
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01


@pytest.mark.parametrize("how", ["explicit", "preset"])
def test_renoise_windowed_loop_matches_the_spec(models, how):
    """The step-distill path on long video: the renoise sampler over an explicit step list, directly or through
    preset="fast" (which must resolve to the same schedule, cfg 1 and sampler)."""
    args = dict(inputs(29), cfg_scale=1.0)
    pipe = make(WanUniAnimateLongVideoPipeline, models)
    if how == "preset":
        pipe.step_distilled = True
        extra = dict(preset="fast", cfg_scale=3.0)          # the preset overrides the guidance
    else:
        extra = dict(denoising_step_list=[1000, 750, 500, 250], sampler="renoise")
    got = frames_of(pipe(**dict(args, **extra), context_size=5, context_overlap=2))
    expected = reference_long(models, args, context_size=5, overlap=2, step_list=[1000, 750, 500, 250])
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_seed_reproduces_and_frames_round_down(models, caplog):
    pipe = make(WanUniAnimateLongVideoPipeline, models)
    args = inputs(15)                                 # rounded down to 13: T = 4, windows (0,3) and (1,4)
    a = frames_of(pipe(**args, context_size=3, context_overlap=2))
    b = frames_of(pipe(**args, context_size=3, context_overlap=2))
    assert a.shape[0] == 13 and np.array_equal(a, b)
    assert a.std() > 5                                # a real picture (an unwritten frame would be NaN -> 0)
    assert "rounded down" in caplog.text


# ------------------------------------------------------------------- memory that does not grow with length
import diffsynth.pipelines.windows as windows  # noqa: E402


def stress_args():
    """Three windows, CFG, TeaCache skipping every middle step (reused residuals), tiled decode."""
    args = inputs(17)                                  # T = 5: windows (0,3) (1,4) (2,5)
    args.update(num_inference_steps=3, tiled=True, tile_size=(2, 2), tile_stride=(1, 1), tea_cache_l1_thresh=1e9,
                tea_cache_model_id="Wan2.1-I2V-14B-720P", context_size=3, context_overlap=2)
    return args


@pytest.fixture(scope="module")
def former_output(models):
    """The former placement: every window's pose tokens and TeaCache state on the device, one-shot decode."""
    return frames_of(make(WanUniAnimateLongVideoPipeline, models)(**stress_args(), window_state="device"))


@pytest.mark.parametrize("window_state", ["offload", "recompute"])
def test_parked_or_recomputed_window_state_gives_the_same_frames(models, former_output, window_state):
    pipe = make(WanUniAnimateLongVideoPipeline, models)
    assert former_output.shape == (17, H, W, 3) and former_output.std() > 5
    assert np.array_equal(frames_of(pipe(**stress_args(), window_state=window_state)), former_output)


def test_streamed_output_gives_the_same_frames(models, former_output, tmp_path):
    pipe = make(WanUniAnimateLongVideoPipeline, models)
    stream = pipe(**stress_args(), output_type="iterator")
    assert not isinstance(stream, list)
    assert np.array_equal(frames_of(stream), former_output)
    path = pipe.generate_to_file(tmp_path / "long.mp4", **stress_args())
    from diffsynth.data import VideoData
    assert len(VideoData(video_file=path)) == 17
    with pytest.raises(FileExistsError):
        pipe.generate_to_file(path, **stress_args())
    with pytest.raises(ValueError, match="output_type"):
        pipe(**stress_args(), output_type="numpy")


def test_generate_to_file_streams_the_short_pipeline_too(models, tmp_path, monkeypatch):
    short = make(WanUniAnimateVideoPipeline, models)
    args = inputs(9)
    expected = frames_of(short(**args))
    streamed = []
    real = short.decode_iter

    def spy(*a):
        for frame in real(*a):
            streamed.append(np.asarray(frame))
            yield frame
    monkeypatch.setattr(short, "decode_iter", spy)
    path = short.generate_to_file(tmp_path / "short.mp4", **args)
    from diffsynth.data import VideoData
    assert len(VideoData(video_file=path)) == 9
    assert np.array_equal(np.stack(streamed), expected)      # the written frames came from the stream
    assert isinstance(short(**args), list)                   # a plain call after it still returns the list


def test_window_state_is_parked_while_other_windows_run(models, monkeypatch):
    """TeaCache residuals go to `offload_device` after their window's step and come back for the next one; pose
    tokens are computed once per window ("offload") or at every window step ("recompute")."""
    pipe = make(WanUniAnimateLongVideoPipeline, models)
    seen, moves, made = [], [], []
    real_move, real_tokens, real_predict = windows._move_caches, pipe.encode_pose_video, pipe.predict

    def move(caches, device):
        real_move(caches, device)
        for cache in caches:
            if cache is not None and cache.previous_residual is not None:
                cache.previous_residual.where = device      # tag: where the pipeline asked for it to be
        moves.append(device)

    def predict(dit, window, timestep, *rest):
        caches = rest[-1]
        seen.append(getattr(caches[0].previous_residual, "where", None))
        return real_predict(dit, window, timestep, *rest)
    monkeypatch.setattr(windows, "_move_caches", move)
    monkeypatch.setattr(pipe, "predict", predict)
    monkeypatch.setattr(pipe, "encode_pose_video", lambda *a: made.append(1) or real_tokens(*a))
    pipe.offload_device = torch.device("cpu", 0)             # a device object distinct from pipe.device
    pipe(**stress_args())
    assert len(made) == 3                                    # one pose-token pass per window, before the loop
    assert moves == [pipe.device, pipe.offload_device] * 9   # 3 steps x 3 windows: onto the device, then parked
    assert seen == [None] * 3 + [pipe.device] * 6            # the running window's residual is on the device
    made.clear()
    pipe(**stress_args(), window_state="recompute")
    assert len(made) == 1 + 9
    moves.clear()
    pipe(**stress_args(), window_state="device")
    assert set(moves) == {pipe.device}
