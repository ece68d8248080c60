"""The release table: finding the release or the demo model, each model in its dtype, configurations written beside
custom-size weights, and `from_pretrained` on both."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from diffsynth.loading import ModelManager
from diffsynth.loading.files import CheckpointError
from diffsynth.loading.formats import ConfigError
from diffsynth.loading.manager import plan_load
from diffsynth.loading.release import (DEMO_FILES, DEMO_FOLDER, UNIANIMATE_FILE, WAN_I2V_FOLDER, find_model_files,
                                       model_dtype, release_files)
from diffsynth.loading.sidecar import sidecar_path, write_config_sidecar
from diffsynth.pipelines import WanUniAnimateVideoPipeline, WanVideoPipeline
from diffsynth.tiny import TINY_CLIP, TINY_T5, build_tiny_models, save_tiny_checkpoints


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Tiny models in the release's folder layout: checkpoints/Wan2.1-I2V-14B-720P/ + the UniAnimate file beside."""
    root = tmp_path_factory.mktemp("release")
    models = build_tiny_models(str(root / "tok"), seed=5)
    ckpt = save_tiny_checkpoints(models, str(root / "checkpoints" / WAN_I2V_FOLDER), seed=5)
    shutil.move(ckpt.unianimate, root / "checkpoints" / UNIANIMATE_FILE)
    return root / "checkpoints", ckpt


def test_the_configuration_beside_custom_weights_is_read(tmp_path):
    clip = DEMO_FOLDER / DEMO_FILES["image_encoder"]
    assert sidecar_path(clip).is_file() and plan_load(str(clip)).config == TINY_CLIP
    bare = tmp_path / clip.name
    shutil.copy(clip, bare)
    with pytest.raises(ConfigError, match="pass config=ClipVisionConfig"):   # shapes alone cannot say
        plan_load(str(bare))
    write_config_sidecar(bare, TINY_T5)                  # a sidecar for another kind of model is not this one's
    with pytest.raises(ConfigError):
        plan_load(str(bare))
    sidecar_path(bare).write_text(json.dumps({"class": "ClipVisionConfig", "width": 32}))
    with pytest.raises(CheckpointError, match="unknown ClipVisionConfig fields"):
        plan_load(str(bare))


def test_release_files_in_either_folder_and_missing_ones_named(release, tmp_path):
    folder, ckpt = release
    files = release_files(folder)
    assert files.dit == sorted(ckpt.dit_shards) and files.unianimate == str(folder / UNIANIMATE_FILE)
    assert release_files(folder / WAN_I2V_FOLDER).unianimate == files.unianimate     # the Wan folder itself
    assert release_files(folder, with_unianimate=False).unianimate is None
    with pytest.raises(FileNotFoundError, match="python -m diffsynth download"):
        release_files(tmp_path)
    assert find_model_files("demo").image_encoder == str(DEMO_FOLDER / DEMO_FILES["image_encoder"])


def test_dtypes_come_from_one_table():
    assert model_dtype("image_encoder", torch.bfloat16) == torch.float32
    assert model_dtype("pose_guider", torch.bfloat16) == torch.float32
    assert model_dtype("dit", torch.bfloat16) == torch.bfloat16 == model_dtype("vae", torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_from_pretrained_equals_the_manager_flow(release, dtype):
    folder, ckpt = release
    pipe = WanUniAnimateVideoPipeline.from_pretrained(folder, torch_dtype=dtype, progress=False)
    manager = ModelManager(device="cpu", progress=False)     # the README's flow, written out
    manager.load_models([ckpt.image_encoder], torch_dtype=torch.float32, config=TINY_CLIP)
    manager.load_models([ckpt.dit_shards, ckpt.text_encoder, ckpt.vae], torch_dtype=dtype)
    manager.load_lora_v2(str(folder / UNIANIMATE_FILE), lora_alpha=1.0)
    reference = WanUniAnimateVideoPipeline.from_model_manager(manager, torch_dtype=dtype, device="cpu")
    for name in WanUniAnimateVideoPipeline.MODEL_NAMES:
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), (name, key)
    assert next(pipe.image_encoder.parameters()).dtype == torch.float32
    assert next(pipe.dit.parameters()).dtype == dtype


def test_from_pretrained_demo_and_the_plain_pipeline():
    pipe = WanUniAnimateVideoPipeline.from_pretrained("demo", torch_dtype=torch.float32, progress=False)
    assert pipe.pose_guider is not None and pipe.prompter.tokenizer is not None
    plain = WanVideoPipeline.from_pretrained("demo", torch_dtype=torch.float32, progress=False)
    assert not hasattr(plain, "pose_guider")
    # the plain pipeline does not merge the UniAnimate LoRA: its DiT is the base one
    assert not torch.equal(plain.dit.blocks[0].self_attn.q.weight, pipe.dit.blocks[0].self_attn.q.weight)


@pytest.fixture(scope="module")
def user_loras(release, tmp_path_factory):
    """A UniAnimate LoRA someone trained (LoRA factors + pose guider, other values) and a plain LoRA (no pose)."""
    from safetensors.torch import save_file

    folder, _ = release
    shipped = torch.load(folder / UNIANIMATE_FILE, weights_only=True)
    root = tmp_path_factory.mktemp("user_loras")
    trained = {k: (v * 1.5 + 0.01).contiguous() for k, v in shipped.items()}
    plain = {k: (v * 0.5).contiguous() for k, v in shipped.items() if ".lora_" in k}
    save_file(trained, root / "my_unianimate.safetensors")
    save_file(plain, root / "style.safetensors")
    return root / "my_unianimate.safetensors", root / "style.safetensors"


def _states(pipe):
    return {name: getattr(pipe, name).state_dict() for name in ("dit", "pose_guider")}


def _equal(a, b) -> bool:
    return all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])


def test_a_users_unianimate_lora_replaces_the_shipped_one_unless_stacked(release, user_loras):
    folder, ckpt = release
    mine, style = user_loras
    replaced = WanUniAnimateVideoPipeline.from_pretrained(folder, torch_dtype=torch.float32, loras=[(mine, 1.0)],
                                                          progress=False)
    manager = ModelManager(device="cpu", progress=False)          # what replacing means: base + the user's file
    manager.load_models([ckpt.image_encoder, ckpt.dit_shards, ckpt.text_encoder, ckpt.vae], torch_dtype=torch.float32)
    manager.load_lora_v2(str(mine), lora_alpha=1.0)
    expected = WanUniAnimateVideoPipeline.from_model_manager(manager, torch_dtype=torch.float32, device="cpu")
    assert _equal(_states(replaced), _states(expected))
    assert any("replaces the UniAnimate checkpoint" in line for line in replaced.loaded)
    assert f"pose guider from: {mine}" in replaced.loaded
    stacked = WanUniAnimateVideoPipeline.from_pretrained(folder, torch_dtype=torch.float32, loras=[(mine, 1.0)],
                                                         stack_loras=True, progress=False)
    assert not _equal(_states(stacked), _states(replaced))        # both LoRAs merged
    assert sum(line.startswith("LoRA merged") for line in stacked.loaded) == 2
    plain = WanUniAnimateVideoPipeline.from_pretrained(folder, torch_dtype=torch.float32, loras=[(style, 0.5)],
                                                       progress=False)
    assert any("merged after the UniAnimate checkpoint" in line for line in plain.loaded)
    assert f"pose guider from: {folder / UNIANIMATE_FILE}" in plain.loaded     # a LoRA without pose tensors
