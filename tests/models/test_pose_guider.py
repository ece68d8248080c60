"""PoseGuider: released key layout, output shapes at the real sizes, first-frame handling, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffsynth.configs import PoseGuiderConfig
from diffsynth.models.pose_guider import PoseGuider
from tiny import randomize_


def released_pose_keys():
    """Keys and shapes of the UniAnimate checkpoint's pose modules (upstream spec 1.4)."""
    keys = {"dwpose_embedding.0.weight": (16, 3, 3, 3, 3), "dwpose_embedding.0.bias": (16,),
            "dwpose_embedding.12.weight": (5120, 16, 1, 2, 2), "dwpose_embedding.12.bias": (5120,),
            "randomref_embedding_pose.0.weight": (16, 3, 3, 3), "randomref_embedding_pose.0.bias": (16,),
            "randomref_embedding_pose.10.weight": (20, 16, 3, 3), "randomref_embedding_pose.10.bias": (20,)}
    for i in (2, 4, 6, 8, 10):
        keys[f"dwpose_embedding.{i}.weight"], keys[f"dwpose_embedding.{i}.bias"] = (16, 16, 3, 3, 3), (16,)
    for i in (2, 4, 6, 8):
        keys[f"randomref_embedding_pose.{i}.weight"], keys[f"randomref_embedding_pose.{i}.bias"] = (16, 16, 3, 3), (16,)
    return keys


def test_state_dict_matches_the_released_checkpoint():
    with torch.device("meta"):
        guider = PoseGuider()
    assert {k: tuple(v.shape) for k, v in guider.state_dict().items()} == released_pose_keys()
    assert sum(p.numel() for p in guider.dwpose_embedding.parameters()) == 368_752
    assert sum(p.numel() for p in guider.randomref_embedding_pose.parameters()) == 12_628


@pytest.mark.parametrize("height, width, tokens", [(832, 480, (21, 52, 30)), (1280, 720, (21, 80, 45))])
def test_output_shapes_at_release_sizes(height, width, tokens):
    with torch.device("meta"):
        guider = PoseGuider()
        video = torch.empty(1, 3, 81, height, width)
        ref = torch.empty(1, 3, height, width)
        pose_emb = guider.embed_pose_video(video)
        ref_emb = guider.embed_reference_pose(ref)
    assert tuple(pose_emb.shape) == (1, 5120, *tokens)
    assert tuple(ref_emb.shape) == (1, 20, 1, height // 8, width // 8)


def test_first_frame_is_repeated_three_times():
    guider = randomize_(PoseGuider(PoseGuiderConfig(out_dim=8)), std=0.2)
    video = torch.rand(1, 3, 5, 32, 32)
    with torch.no_grad():
        got = guider.embed_pose_video(video)
        x = torch.cat([video[:, :, :1]] * 3 + [video], dim=2)
        # independent forward: the layer table of upstream spec 1.2 applied by hand
        strides = [(1, 1, 1)] * 3 + [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
        seq = guider.dwpose_embedding
        for i, s in enumerate(strides):
            x = F.silu(F.conv3d(x, seq[2 * i].weight, seq[2 * i].bias, stride=s, padding=1))
        x = F.conv3d(x, seq[12].weight, seq[12].bias, stride=(1, 2, 2))
    assert got.shape == (1, 8, 2, 2, 2)
    torch.testing.assert_close(got, x)


@pytest.mark.parametrize("shape, message", [
    ((1, 3, 6, 32, 32), "4k\\+1"), ((1, 3, 5, 24, 32), "multiple of 16"), ((1, 4, 5, 32, 32), r"\[B, 3, F, H, W\]"),
])
def test_bad_pose_video(shape, message):
    with pytest.raises(ValueError, match=message):
        PoseGuider(PoseGuiderConfig(out_dim=8)).embed_pose_video(torch.zeros(shape))


def chunk_guider():
    return randomize_(PoseGuider(PoseGuiderConfig(out_dim=8)), std=0.3)


@pytest.mark.parametrize("frames", [1, 5, 29, 41])
@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_chunked_pose_video_is_bit_equal_on_one_conv_backend(frames, chunk):
    """Chunks reach 2 latent frames back and 1 forward (the receptive field, see `_chunk_spans`), so every kept
    output reads the same inputs as the one-shot pass. Compared on PyTorch's native conv (oneDNN disabled): the
    one-shot 41-frame clip would otherwise switch to oneDNN, whose different summation order alone changes the
    last bits (an off-by-one halo changes outputs by whole units, see the float64 test)."""
    guider = chunk_guider()
    video = torch.rand(1, 3, frames, 32, 48, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        assert torch.equal(guider.embed_pose_video(video, chunk_size=chunk), guider.embed_pose_video(video))


@pytest.mark.parametrize("frames", [5, 29])
@pytest.mark.parametrize("chunk", [1, 3])
def test_chunked_pose_video_is_bit_equal_in_bfloat16(frames, chunk):
    """The same halo in bf16 (the guider's dtype when a pipeline loads everything in bf16): bit-equal on both CPU
    backends at this size."""
    guider = chunk_guider().to(torch.bfloat16)
    video = torch.rand(1, 3, frames, 32, 48, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        assert torch.equal(guider.embed_pose_video(video, chunk_size=chunk), guider.embed_pose_video(video))


def test_auto_chunk_size_keeps_small_clips_whole_and_bounds_large_ones():
    guider = PoseGuider(PoseGuiderConfig(out_dim=8))          # hidden_dim 16, fp32: 64 bytes per pixel and frame
    assert guider.auto_chunk_size(81, 64, 48) is None          # the golden sizes: one pass, as before
    budget = 2**30
    for (height, width), expected in {(832, 480): 7, (1280, 720): 1}.items():
        chunk = guider.auto_chunk_size(81, height, width)
        assert chunk == expected, (height, width, chunk)
        per_frame = 16 * height * width * 4
        assert 4 * (chunk + 3) * per_frame <= budget < 4 * (chunk + 4) * per_frame   # the largest that fits
    assert guider.auto_chunk_size(81, 832, 480, budget_bytes=1) == 1
    assert guider.to(torch.bfloat16).auto_chunk_size(81, 1280, 720) == 6    # half the bytes per frame


def test_pipelines_chunk_the_pose_guider_without_gradients_only(monkeypatch):
    """`units.encode_pose_video` with no chunk size: chunked by `auto_chunk_size` under no_grad (the pipelines), one
    pass with gradients (training); the tokens are the one-pass tokens either way."""
    from diffsynth.pipelines import units

    guider = chunk_guider()
    calls = []
    original = PoseGuider.embed_pose_video

    def spy(self, video, chunk_size=None):
        calls.append(chunk_size)
        return original(self, video, chunk_size=chunk_size)
    monkeypatch.setattr(PoseGuider, "embed_pose_video", spy)
    monkeypatch.setattr(PoseGuider, "auto_chunk_size", lambda self, f, h, w: 2)
    poses = torch.rand(3, 29, 32, 48, generator=torch.Generator().manual_seed(1)) * 255
    with torch.backends.mkldnn.flags(enabled=False):
        with torch.no_grad():
            chunked = units.encode_pose_video(guider, poses, "cpu")
            whole = units.encode_pose_video(guider, poses, "cpu", chunk_size=100)
        trained = units.encode_pose_video(guider, poses, "cpu")
    assert calls == [2, 100, None]
    assert torch.equal(chunked, whole) and torch.equal(trained.detach(), whole)


def test_chunked_pose_video_matches_in_float64_on_the_default_backend():
    guider = chunk_guider().double()
    video = torch.rand(1, 3, 45, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        whole = guider.embed_pose_video(video)
        for chunk in (1, 4):
            # values are O(1e3-1e4); a wrong halo or stride phase is off by O(1)
            torch.testing.assert_close(guider.embed_pose_video(video, chunk_size=chunk), whole, rtol=1e-12,
                                       atol=1e-9)


def test_chunk_spans_cover_every_output_once_with_aligned_halos():
    for frames in range(1, 30):
        for chunk in range(1, 8):
            spans = PoseGuider._chunk_spans(frames, chunk)
            assert [k for k0, k1, _, _ in spans for k in range(k0, k1)] == list(range(frames))
            for k0, k1, a, b in spans:
                assert a % 4 == 0 and a == 4 * max(k0 - 2, 0) and b == 4 * min(k1 + 1, frames)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_guider().embed_pose_video(torch.zeros(1, 3, 5, 16, 16), chunk_size=0)
