"""`python -m diffsynth.convert_lora`: every output layout loads back to the same merged weights as the input, the
pose guider goes to `OUT.pose_guider.safetensors`, existing files are refused without --overwrite."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loading.test_lora_formats import RANK, base_sd, manager_with, random_factors, write_layout  # noqa: F401
from tiny import TINY_POSE, randomize_
from diffsynth.convert_lora import convert_lora, main
from diffsynth.loading.lora import pose_guider_state_dict, pose_sidecar_path
from diffsynth.models.pose_guider import PoseGuider


@pytest.fixture(scope="module")
def pose():
    return {k: v.clone() for k, v in randomize_(PoseGuider(TINY_POSE), seed=4, std=0.2).state_dict().items()}


def source_lora(tmp_path, base_sd, pose, layout):   # noqa: F811
    """A UniAnimate-like LoRA in `layout` (alpha 8, rank 4: scale 2), with deltas for comfy and the pose guider."""
    tensors = write_layout(layout, random_factors(base_sd, seed=11), alpha=8)
    if layout == "comfy":
        gen = torch.Generator().manual_seed(12)
        tensors["diffusion_model.blocks.0.norm3.diff"] = torch.randn(24, generator=gen)
        tensors["diffusion_model.blocks.1.self_attn.q.diff_b"] = torch.randn(24, generator=gen)
        tensors["diffusion_model.blocks.0.diff_m"] = torch.randn(1, 6, 24, generator=gen)
        tensors["diffusion_model.head.head.diff_b"] = torch.randn(64, generator=gen)
    path = tmp_path / f"src_{layout}.safetensors"
    save_file({**tensors, **{f"pipe.{k}": v for k, v in pose.items()}}, str(path))
    return path


def merged_state(tmp_path, base_sd, path):   # noqa: F811
    manager = manager_with(tmp_path, base_sd)
    manager.load_lora_v2(path)
    return manager.fetch_model("wan_video_dit").state_dict(), manager.pose_state_dict


@pytest.mark.parametrize("source", ["diffsynth", "comfy", "kohya", "diffusers"])
@pytest.mark.parametrize("target", ["diffsynth", "comfy", "diffusers"])
def test_round_trip_gives_the_same_merge(tmp_path, base_sd, pose, source, target):   # noqa: F811
    src = source_lora(tmp_path, base_sd, pose, source)
    want, want_pose = merged_state(tmp_path, base_sd, src)
    out = tmp_path / "out.safetensors"
    assert main([str(src), str(out), "--to", target]) == 0
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["diffsynth_lora_layout"] == target
    assert not any("dwpose" in k or "randomref" in k or k.endswith("alpha") for k in keys)
    expected_key = {"diffsynth": "pipe.dit.blocks.0.self_attn.q.lora_A.default.weight",
                    "comfy": "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
                    "diffusers": "transformer.blocks.0.attn1.to_q.lora_A.weight"}[target]
    assert expected_key in keys
    sidecar = tmp_path / "out.pose_guider.safetensors"
    assert sidecar.is_file()
    got, got_pose = merged_state(tmp_path, base_sd, out)          # the pose file is read beside `out`
    for key, value in want.items():
        assert torch.equal(got[key], value), key                   # scale 2 folded into B: exact
    got_pose, want_pose = pose_guider_state_dict(got_pose), pose_guider_state_dict(want_pose)
    assert set(got_pose) == set(want_pose) == set(pose)
    assert all(torch.equal(got_pose[k], want_pose[k]) for k in pose)


def test_non_power_of_two_scale_is_folded_into_up(tmp_path, base_sd, pose):   # noqa: F811
    src = tmp_path / "src.safetensors"
    save_file(write_layout("diffsynth", random_factors(base_sd, seed=3), alpha=6), str(src))     # scale 1.5
    want, _ = merged_state(tmp_path, base_sd, src)
    convert_lora(src, tmp_path / "out.safetensors", "comfy")
    got, _ = merged_state(tmp_path, base_sd, tmp_path / "out.safetensors")
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6)


def test_existing_outputs_are_refused_without_overwrite(tmp_path, base_sd, pose, capsys):   # noqa: F811
    src = source_lora(tmp_path, base_sd, pose, "diffsynth")
    out = tmp_path / "out.safetensors"
    assert main([str(src), str(out), "--to", "comfy"]) == 0
    first = out.read_bytes()
    assert main([str(src), str(out), "--to", "diffusers"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == first
    out.unlink()
    assert main([str(src), str(out), "--to", "diffusers"]) == 2            # the pose file is still there
    assert "out.pose_guider.safetensors exists" in capsys.readouterr().err and not out.exists()
    assert main([str(src), str(out), "--to", "diffusers", "--overwrite"]) == 0
    assert not list(tmp_path.glob(".*tmp*"))                                # no temporary file left


def test_stale_pose_file_is_removed_only_with_overwrite(tmp_path, base_sd, pose):   # noqa: F811
    src = tmp_path / "src.safetensors"
    save_file(write_layout("diffsynth", random_factors(base_sd), alpha=RANK), str(src))          # no pose guider
    out = tmp_path / "out.safetensors"
    save_file(pose, str(pose_sidecar_path(out)))
    with pytest.raises(FileExistsError, match="pose_guider"):
        convert_lora(src, out, "comfy")
    assert convert_lora(src, out, "comfy", overwrite=True) == (out, None)
    assert not pose_sidecar_path(out).exists()


def test_errors_name_the_bad_input(tmp_path, capsys):
    assert main([str(tmp_path / "missing.safetensors"), str(tmp_path / "o.safetensors"), "--to", "comfy"]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    save_file({"x.weight": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    assert main([str(tmp_path / "other.safetensors"), str(tmp_path / "o.safetensors"), "--to", "comfy"]) == 2
    err = capsys.readouterr().err
    assert "other.safetensors" in err and "not a LoRA layout" in err
    assert main([str(tmp_path / "other.safetensors"), str(tmp_path / "o.ckpt"), "--to", "comfy"]) == 2
    assert "must be a .safetensors file name" in capsys.readouterr().err
