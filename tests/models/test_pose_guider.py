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
