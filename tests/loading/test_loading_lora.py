"""UniAnimate LoRA: a LoRA injected by PEFT itself, saved in the trainer's flat format, merged by load_lora_v2,
must reproduce PEFT's unmerged forward; pose-guider tensors are collected for the pipeline."""
from __future__ import annotations

import copy
import re
import shutil

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import save_file

from loading.loading_helpers import dit_forward, tiny_dit
from tiny import TINY_I2V, TINY_POSE, TINY_T2V, randomize_
from diffsynth.loading import LoraError, ModelManager, NonFiniteTensorError
from diffsynth.loading.files import CheckpointError, CheckpointFile
from diffsynth.loading.lora import is_pose_key
from diffsynth.models.pose_guider import PoseGuider

RANK, ALPHA = 4, 8
TARGETS = ["q", "k", "v", "o", "ffn.0", "ffn.2"]


@pytest.fixture(scope="module")
def trained():
    """(base DiT state dict, PEFT-injected DiT, trainer-format LoRA tensors, pose tensors, PEFT forward)."""
    base = tiny_dit(TINY_I2V)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    peft_dit = inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS),
                                       copy.deepcopy(base))
    gen = torch.Generator().manual_seed(7)
    lora = {}
    with torch.no_grad():
        for name, p in peft_dit.named_parameters():
            if "lora_" in name:     # PEFT starts B at zero; random factors make the test meaningful
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
                lora[f"pipe.dit.{name}"] = p.detach().clone()
    pose = {k: v.clone() for k, v in randomize_(PoseGuider(TINY_POSE), seed=3, std=0.2).state_dict().items()}
    return base_sd, peft_dit, lora, pose, dit_forward(peft_dit)


def _manager_with_dit(tmp_path, base_sd, dtype=torch.float32):
    path = tmp_path / "dit.safetensors"
    save_file(base_sd, str(path))
    manager = ModelManager(progress=False)
    manager.load_models([path], torch_dtype=dtype, config=TINY_I2V)
    return manager


def test_peft_names_and_coverage(trained):
    _, _, lora, _, _ = trained
    assert "pipe.dit.blocks.0.self_attn.q.lora_A.default.weight" in lora
    assert "pipe.dit.blocks.1.ffn.2.lora_B.default.weight" in lora
    assert not any("k_img" in k or "v_img" in k for k in lora)       # ".k" does not match k_img
    assert len(lora) == TINY_I2V.num_layers * 10 * 2


def _zero_to_fp32_shards(tmp_path, base_sd, lora, pose):
    """DeepSpeed export: frozen weights included; one shard holds only lora_A tensors, another only lora_B."""
    frozen = {f"pipe.dit.{k}": v for k, v in base_sd.items()}
    frozen["pipe.text_encoder.blocks.0.attn.q.weight"] = torch.randn(8, 8)
    a = {k: v for k, v in lora.items() if ".lora_A." in k}
    b = {k: v for k, v in lora.items() if ".lora_B." in k}
    pose_keys = sorted(pose)
    parts = [
        {**dict(list(frozen.items())[:40]), **{k: pose[k] for k in pose_keys[:10]}},
        a,
        {**dict(list(frozen.items())[40:]), **b, **{k: pose[k] for k in pose_keys[10:]}},
    ]
    paths = []
    for i, part in enumerate(parts):
        path = tmp_path / f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in part.items()}, str(path))
        paths.append(path)
    return paths, set(frozen)


@pytest.mark.parametrize("layout", ["ckpt_with_alpha_argument", "safetensors_with_alpha_metadata",
                                    "deepspeed_shards"])
def test_merge_equals_peft_unmerged_forward(tmp_path, trained, layout, monkeypatch):
    base_sd, _, lora, pose, expected = trained
    manager = _manager_with_dit(tmp_path, base_sd)
    kwargs, frozen = {}, set()
    if layout == "ckpt_with_alpha_argument":
        source = tmp_path / "epoch=0-step=12000.ckpt"
        torch.save({**lora, **pose}, source)             # single device: a plain flat pickle
        kwargs["network_alpha"] = ALPHA
    elif layout == "safetensors_with_alpha_metadata":
        source = tmp_path / "lora.safetensors"
        save_file({**lora, **pose}, str(source), metadata={"lora_alpha": str(ALPHA)})
    else:
        source, frozen = _zero_to_fp32_shards(tmp_path, base_sd, lora, pose)
        kwargs["network_alpha"] = ALPHA
    real_read, read = CheckpointFile.read, []
    monkeypatch.setattr(CheckpointFile, "read", lambda self, key: read.append(key) or real_read(self, key))
    merged = manager.load_lora_v2(source, lora_alpha=1.0, **kwargs)
    assert merged == TINY_I2V.num_layers * 10
    assert not frozen & set(read)                        # frozen weights of an export are never read
    got = dit_forward(manager.fetch_model("wan_video_dit"))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert set(manager.pose_state_dict) == set(pose)


def test_without_alpha_the_scale_is_one_as_upstream(tmp_path, trained):
    base_sd, _, lora, _, expected = trained
    manager = _manager_with_dit(tmp_path, base_sd)
    save_file(lora, str(tmp_path / "lora.safetensors"))
    manager.load_lora_v2(tmp_path / "lora.safetensors", lora_alpha=0.5)
    dit = manager.fetch_model("wan_video_dit")
    name = "blocks.1.cross_attn.v"
    a, b = lora[f"pipe.dit.{name}.lora_A.default.weight"], lora[f"pipe.dit.{name}.lora_B.default.weight"]
    want = base_sd[f"{name}.weight"] + 0.5 * (b @ a)
    assert torch.equal(dit.state_dict()[f"{name}.weight"], want)
    assert torch.equal(dit.state_dict()["blocks.1.cross_attn.k_img.weight"], base_sd["blocks.1.cross_attn.k_img.weight"])
    assert not torch.allclose(dit_forward(dit), expected, atol=1e-3)      # alpha/r = 2 was not applied


@pytest.mark.parametrize("prefix", ["", "diffusion_model.", "model.diffusion_model."])
def test_other_prefixes_and_kohya_alpha(tmp_path, trained, prefix):
    base_sd, _, lora, _, expected = trained
    manager = _manager_with_dit(tmp_path, base_sd)
    renamed = {prefix + k[len("pipe.dit."):]: v for k, v in lora.items()}
    modules = {k.split(".lora_")[0] for k in renamed}
    renamed.update({f"{m}.alpha": torch.tensor(float(ALPHA)) for m in modules})      # per-module alpha
    save_file(renamed, str(tmp_path / "lora.safetensors"))
    manager.load_lora_v2(tmp_path / "lora.safetensors")
    torch.testing.assert_close(dit_forward(manager.fetch_model("wan_video_dit")), expected, rtol=1e-5, atol=1e-5)


def test_bf16_weights_merge_in_fp32_on_request(tmp_path, trained):
    """merge_precision="float32": the update summed in fp32, the weight rounded once (not upstream's numbers)."""
    base_sd, _, lora, _, _ = trained
    manager = _manager_with_dit(tmp_path, base_sd, torch.bfloat16)
    save_file(lora, str(tmp_path / "lora.safetensors"))
    manager.load_lora_v2(tmp_path / "lora.safetensors", network_alpha=ALPHA, merge_precision="float32")
    name = "blocks.0.ffn.2"
    a, b = lora[f"pipe.dit.{name}.lora_A.default.weight"], lora[f"pipe.dit.{name}.lora_B.default.weight"]
    want = (base_sd[f"{name}.weight"].bfloat16().float() + (ALPHA / RANK) * (b @ a)).bfloat16()
    got = manager.fetch_model("wan_video_dit").state_dict()[f"{name}.weight"]
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_a_only_shard_alone_is_an_error_and_changes_nothing(tmp_path, trained):
    base_sd, _, lora, _, _ = trained
    manager = _manager_with_dit(tmp_path, base_sd)
    save_file({k: v for k, v in lora.items() if ".lora_A." in k}, str(tmp_path / "a.safetensors"))
    with pytest.raises(LoraError, match="miss lora_B.*pass all shards"):
        manager.load_lora_v2(tmp_path / "a.safetensors")
    for k, v in manager.fetch_model("wan_video_dit").state_dict().items():
        assert torch.equal(v, base_sd[k]), k


def test_lora_for_another_model_changes_nothing(tmp_path, trained):
    base_sd, _, lora, pose, _ = trained
    manager = _manager_with_dit(tmp_path, base_sd)
    bad = dict(lora)
    bad["pipe.dit.blocks.1.ffn.0.lora_B.default.weight"] = torch.randn(64, RANK)        # ffn 64 instead of 32
    torch.save({**bad, **pose}, tmp_path / "bad.ckpt")
    with pytest.raises(LoraError, match=r"blocks\.1\.ffn\.0.*another model size"):
        manager.load_lora_v2(tmp_path / "bad.ckpt")
    unknown = {"pipe.dit.blocks.0.nope.lora_A.default.weight": torch.randn(RANK, 24),
               "pipe.dit.blocks.0.nope.lora_B.default.weight": torch.randn(24, RANK)}
    torch.save(unknown, tmp_path / "unknown.ckpt")
    with pytest.raises(LoraError, match=r"not Linear layers of the DiT \(e\.g\. blocks\.0\.nope"):
        manager.load_lora_v2(tmp_path / "unknown.ckpt")
    for k, v in manager.fetch_model("wan_video_dit").state_dict().items():
        assert torch.equal(v, base_sd[k]), k
    assert manager.pose_state_dict == {}                  # nothing collected from failed calls


def test_pose_guider_collected_across_files_and_calls(tmp_path, trained):
    base_sd, _, lora, pose, _ = trained
    manager = _manager_with_dit(tmp_path, base_sd)
    keys = sorted(pose)
    torch.save({**lora, **{f"module.{k}": pose[k] for k in keys[:5]}}, tmp_path / "part1.ckpt")   # any prefix
    save_file({k: pose[k] for k in keys[5:15]}, str(tmp_path / "part2.safetensors"))
    save_file({k: pose[k] for k in keys[15:]}, str(tmp_path / "part3.safetensors"))
    manager.load_lora_v2([tmp_path / "part1.ckpt", tmp_path / "part2.safetensors"])
    with pytest.raises(CheckpointError, match="missing.*randomref_embedding_pose"):
        manager.fetch_pose_guider()                        # strict: part 3 not loaded yet
    manager.load_lora_v2(tmp_path / "part3.safetensors")
    guider = manager.fetch_pose_guider(torch_dtype=torch.bfloat16)
    assert isinstance(guider, PoseGuider) and guider.config == TINY_POSE
    for k, v in guider.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, pose[k].bfloat16()), k


def test_pose_guider_errors_name_the_fix(tmp_path, trained):
    base_sd, _, _, pose, _ = trained
    manager = _manager_with_dit(tmp_path, base_sd)
    with pytest.raises(CheckpointError, match=r"load_lora_v2\(path\) before building the pipeline"):
        manager.fetch_pose_guider()
    wide = {k: v for k, v in randomize_(PoseGuider(TINY_POSE.__class__(out_dim=48))).state_dict().items()}
    torch.save(wide, tmp_path / "pose48.ckpt")
    manager.load_lora_v2(tmp_path / "pose48.ckpt")
    with pytest.raises(CheckpointError, match="outputs 48 channels but the DiT width is 24"):
        manager.fetch_pose_guider()


def test_lora_needs_a_dit(tmp_path, trained):
    _, _, lora, _, _ = trained
    save_file(lora, str(tmp_path / "lora.safetensors"))
    with pytest.raises(LoraError, match="no DiT is loaded"):
        ModelManager().load_lora_v2(tmp_path / "lora.safetensors")


def test_t2v_dit_accepts_the_same_recipe(tmp_path):
    """Rank is read from the tensors: a rank-2 LoRA on a T2V DiT."""
    base = tiny_dit(TINY_T2V, seed=5)
    peft_dit = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=TARGETS), copy.deepcopy(base))
    with torch.no_grad():
        for name, p in peft_dit.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    lora = {f"pipe.dit.{k}": v.detach() for k, v in peft_dit.named_parameters() if "lora_" in k}
    save_file(base.state_dict(), str(tmp_path / "t2v.safetensors"))
    save_file(lora, str(tmp_path / "lora.safetensors"))
    manager = ModelManager()
    manager.load_model(tmp_path / "t2v.safetensors", config=TINY_T2V)
    manager.load_lora_v2(tmp_path / "lora.safetensors")        # alpha == r: scale 1 is right
    torch.testing.assert_close(dit_forward(manager.fetch_model("wan_video_dit")), dit_forward(peft_dit),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ stored alpha
def _save(path, tensors, metadata=None):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    else:
        torch.save(tensors, path)                          # the trainer's flat {name: tensor} pickle
    return path


def test_network_alpha_key_is_invisible_to_upstream_loader():
    """Upstream maps every key containing 'lora' (key.split("pipe.dit.")[1]) and the pose markers; the alpha key
    must be neither, or upstream's loader would crash on it."""
    assert "lora" not in "network_alpha" and not is_pose_key("network_alpha") and "pipe.dit." not in "network_alpha"


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_stored_network_alpha_scales_the_merge(tmp_path, trained, suffix):
    """alpha 8 != rank 4 stored in the file: the merge equals PEFT's forward (scale alpha / r), and with a
    strength it equals W + strength * alpha / r * B @ A computed here."""
    base_sd, _, lora, pose, expected = trained
    path = _save(tmp_path / f"unianimate{suffix}", {**lora, **pose, "network_alpha": torch.tensor(float(ALPHA))})
    manager = _manager_with_dit(tmp_path, base_sd)
    manager.load_lora_v2(path, lora_alpha=1.0)
    torch.testing.assert_close(dit_forward(manager.fetch_model("wan_video_dit")), expected, rtol=1e-5, atol=1e-5)
    half = _manager_with_dit(tmp_path, base_sd)
    half.load_lora_v2(path, lora_alpha=0.5)
    name = "blocks.0.self_attn.o"
    a, b = lora[f"pipe.dit.{name}.lora_A.default.weight"], lora[f"pipe.dit.{name}.lora_B.default.weight"]
    want = base_sd[f"{name}.weight"] + 0.5 * (ALPHA / RANK) * (b @ a)
    torch.testing.assert_close(half.fetch_model("wan_video_dit").state_dict()[f"{name}.weight"], want,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_file_without_alpha_merges_at_scale_one(tmp_path, trained, suffix):
    base_sd, _, lora, pose, _ = trained
    manager = _manager_with_dit(tmp_path, base_sd)
    manager.load_lora_v2(_save(tmp_path / f"lora{suffix}", {**lora, **pose}))
    name = "blocks.1.ffn.0"
    a, b = lora[f"pipe.dit.{name}.lora_A.default.weight"], lora[f"pipe.dit.{name}.lora_B.default.weight"]
    assert torch.equal(manager.fetch_model("wan_video_dit").state_dict()[f"{name}.weight"],
                       base_sd[f"{name}.weight"] + b @ a)


def test_network_alpha_metadata_and_argument_override(tmp_path, trained):
    base_sd, _, lora, _, expected = trained
    meta = _save(tmp_path / "meta.safetensors", lora, metadata={"network_alpha": str(ALPHA)})
    manager = _manager_with_dit(tmp_path, base_sd)
    manager.load_lora_v2(meta)
    torch.testing.assert_close(dit_forward(manager.fetch_model("wan_video_dit")), expected, rtol=1e-5, atol=1e-5)
    wrong = _save(tmp_path / "wrong.ckpt", {**lora, "network_alpha": torch.tensor(2.0)})
    manager = _manager_with_dit(tmp_path, base_sd)
    manager.load_lora_v2(wrong, network_alpha=ALPHA)        # the argument wins over the stored value
    torch.testing.assert_close(dit_forward(manager.fetch_model("wan_video_dit")), expected, rtol=1e-5, atol=1e-5)


def test_disagreeing_stored_alphas_are_refused(tmp_path, trained):
    base_sd, _, lora, _, _ = trained
    path = _save(tmp_path / "two.ckpt",
                 {**lora, "network_alpha": torch.tensor(8.0), "lora_alpha": torch.tensor(4.0)})
    manager = _manager_with_dit(tmp_path, base_sd)
    with pytest.raises(LoraError, match="different alphas"):
        manager.load_lora_v2(path)
    for k, v in manager.fetch_model("wan_video_dit").state_dict().items():
        assert torch.equal(v, base_sd[k]), k


# ------------------------------------------------------------------------------------------------ NaN / Inf
@pytest.mark.parametrize("bad_key", ["pipe.dit.blocks.1.ffn.2.lora_B.default.weight", "dwpose_embedding.0.weight",
                                     "network_alpha"])
def test_non_finite_lora_tensor_changes_nothing(tmp_path, trained, bad_key):
    base_sd, _, lora, pose, _ = trained
    tensors = {**lora, **pose, "network_alpha": torch.tensor(float(ALPHA))}
    tensors[bad_key] = tensors[bad_key].clone()
    tensors[bad_key].view(-1)[-1] = float("nan")
    path = _save(tmp_path / "diverged.ckpt", tensors)
    manager = _manager_with_dit(tmp_path, base_sd)
    with pytest.raises(NonFiniteTensorError, match=rf"diverged\.ckpt'?: tensor {re.escape(repr(bad_key))}.*1 NaN"):
        manager.load_lora_v2(path)
    for k, v in manager.fetch_model("wan_video_dit").state_dict().items():
        assert torch.equal(v, base_sd[k]), k
    assert manager.pose_state_dict == {} and manager.lora_paths == []


# ------------------------------------------------------------------------------------------------ merged twice
@pytest.mark.parametrize("again", ["same_str", "pathlib", "relative", "list", "copy", "symlink"])
def test_merging_the_same_lora_twice_warns(tmp_path, trained, caplog, monkeypatch, again):
    base_sd, _, lora, pose, _ = trained
    first = _save(tmp_path / "unianimate.ckpt", {**lora, **pose})
    manager = _manager_with_dit(tmp_path, base_sd)
    manager.load_lora_v2(str(first))
    assert "merged before" not in caplog.text
    monkeypatch.chdir(tmp_path)
    if again == "copy":
        shutil.copy(first, tmp_path / "renamed copy.ckpt")
    elif again == "symlink":
        (tmp_path / "link.ckpt").symlink_to(first)
    second = {"same_str": str(first), "pathlib": first, "relative": "./sub/../unianimate.ckpt", "list": [first],
              "copy": tmp_path / "renamed copy.ckpt", "symlink": tmp_path / "link.ckpt"}[again]
    (tmp_path / "sub").mkdir()
    manager.load_lora_v2(second)
    assert "merged before" in caplog.text and "content has changed" not in caplog.text
    assert ("same tensors as" in caplog.text) == (again == "copy")      # other spellings resolve to the same file


def test_another_lora_does_not_warn_and_a_rewritten_file_does(tmp_path, trained, caplog):
    base_sd, _, lora, pose, _ = trained
    manager = _manager_with_dit(tmp_path, base_sd)
    path = _save(tmp_path / "unianimate.ckpt", {**lora, **pose})
    manager.load_lora_v2(path)
    other = {k: v * 0.5 for k, v in lora.items()}
    manager.load_lora_v2(_save(tmp_path / "other.safetensors", other))     # same names and shapes, other values
    assert "merged before" not in caplog.text
    _save(path, {**other, **pose, "network_alpha": torch.tensor(1.0)})     # retrained in place
    manager.load_lora_v2(path)
    assert "merged before and its content has changed since" in caplog.text
    # A pose-only file read twice replaces identical tensors: nothing to warn about.
    caplog.clear()
    pose_path = _save(tmp_path / "pose.safetensors", pose)
    manager.load_lora_v2(pose_path)
    manager.load_lora_v2(pose_path)
    assert "merged before" not in caplog.text
