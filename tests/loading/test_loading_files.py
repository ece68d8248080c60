"""File readers: safetensors / pickle / shards / folders, cast on the fly, and clear errors for bad files."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from diffsynth.loading.files import (Checkpoint, CheckpointError, NonFiniteTensorError, UnsafeCheckpointError,
                                     all_finite, load_state_dict, resolve_paths)


def _tensors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 3, generator=gen), "b.bias": torch.randn(5, generator=gen),
            "steps": torch.tensor([3, 4])}


def test_safetensors_header_gives_shapes_and_dtypes_without_reading(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"x": torch.zeros(2, 3, dtype=torch.float16), "y": torch.zeros(7, dtype=torch.bfloat16)}, str(path),
              metadata={"lora_alpha": "8"})
    ckpt = Checkpoint(path)
    assert ckpt.shapes == {"x": (2, 3), "y": (7,)}
    assert {k: v.dtype for k, v in ckpt.infos.items()} == {"x": torch.float16, "y": torch.bfloat16}
    assert ckpt.metadata == {"lora_alpha": "8"}
    assert ckpt.nbytes() == 2 * 3 * 2 + 7 * 2


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".ckpt"])
def test_cast_on_read_keeps_integer_tensors(tmp_path, suffix):
    sd = _tensors()
    path = tmp_path / f"m{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    out = load_state_dict(path, torch_dtype=torch.bfloat16)
    assert out["a.weight"].dtype == torch.bfloat16 and torch.equal(out["a.weight"], sd["a.weight"].bfloat16())
    assert out["steps"].dtype == torch.int64 and torch.equal(out["steps"], sd["steps"])


def test_shards_merge_in_order_and_later_files_win(tmp_path):
    save_file({"a": torch.zeros(2), "b": torch.zeros(3)}, str(tmp_path / "1.safetensors"))
    save_file({"b": torch.ones(3), "c": torch.ones(1)}, str(tmp_path / "2.safetensors"))
    out = load_state_dict([tmp_path / "1.safetensors", tmp_path / "2.safetensors"])
    assert list(out) == ["a", "b", "c"]
    assert torch.equal(out["b"], torch.ones(3))


def test_directory_means_its_weight_files_preferring_safetensors(tmp_path):
    for i in (2, 1):
        save_file({f"k{i}": torch.zeros(1)}, str(tmp_path / f"model-0000{i}-of-00002.safetensors"))
    torch.save({"t5": torch.zeros(1)}, tmp_path / "models_t5.pth")
    (tmp_path / "config.json").write_text("{}")
    assert [p.name for p in resolve_paths(tmp_path)] == ["model-00001-of-00002.safetensors",
                                                         "model-00002-of-00002.safetensors"]
    only_pth = tmp_path / "sub"
    only_pth.mkdir()
    torch.save({"w": torch.zeros(1)}, only_pth / "a.pth")
    assert [p.name for p in resolve_paths(only_pth)] == ["a.pth"]


def test_wrapped_pickles_are_unwrapped(tmp_path):
    sd = _tensors()
    torch.save({"model_state": sd}, tmp_path / "vae.pth")
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 12000}, tmp_path / "lightning.ckpt")
    for name in ("vae.pth", "lightning.ckpt"):
        out = load_state_dict(tmp_path / name)
        assert set(out) == set(sd) and all(torch.equal(out[k], sd[k]) for k in sd)


def test_legacy_non_zip_pickle_loads_without_mmap(tmp_path):
    sd = _tensors()
    torch.save(sd, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    out = load_state_dict(tmp_path / "old.pth", torch_dtype=torch.float64)
    assert torch.equal(out["b.bias"], sd["b.bias"].double())


def test_loaded_tensors_do_not_alias_the_mapped_file(tmp_path):
    """Same dtype: no cast happens, yet the tensor must own its memory (not a view of the private file map)."""
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(4096)}, path)
    out = load_state_dict(path)
    data = path.read_bytes()
    start = data.find(b"\x00" * 4096 * 4)
    with open(path, "r+b") as f:          # rewrite the tensor bytes in place
        f.seek(start)
        f.write(b"\x7f" * 4096 * 4)
    assert torch.count_nonzero(out["w"]) == 0


def test_fp8_is_upcast(tmp_path):
    w = torch.randn(8, 8).to(torch.float8_e4m3fn)
    save_file({"w": w}, str(tmp_path / "f8.safetensors"))
    assert load_state_dict(tmp_path / "f8.safetensors")["w"].dtype == torch.bfloat16
    out = load_state_dict(tmp_path / "f8.safetensors", torch_dtype=torch.float32)["w"]
    assert out.dtype == torch.float32 and torch.equal(out, w.float())


def test_truncated_safetensors_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_state_dict(path)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pth.*truncated or corrupt"):
        load_state_dict(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "payload": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth.*weights_only=True\) refused"):
        load_state_dict(path)
    assert not os.path.exists(marker)


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        resolve_paths(tmp_path / "nope.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported file type"):
        resolve_paths(tmp_path / "weights.npz")
    with pytest.raises(CheckpointError, match="no weight file"):
        resolve_paths(tmp_path)


# ------------------------------------------------------------------------------------------------ finite values
_BAD = [(dtype, bad) for dtype in (torch.float32, torch.float16, torch.bfloat16)
        for bad in (float("nan"), float("inf"), -float("inf"))] + [(torch.float8_e4m3fn, float("nan"))]


@pytest.mark.parametrize("dtype, bad", _BAD)
def test_all_finite_finds_one_bad_element(dtype, bad):
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert all_finite(x)
    if dtype == torch.float8_e4m3fn:
        x.view(torch.uint8)[2, 777] = 0x7F                      # e4m3fn has NaN but no Inf
    else:
        x[2, 777] = bad
    assert not all_finite(x)


def test_all_finite_when_only_the_sum_overflows():
    """The fast path's sum overflows fp16 (1000 x 60000); the exact pass must still say finite."""
    x = torch.full((1000,), 60000.0, dtype=torch.float16)
    assert not torch.isfinite(x.sum()) and all_finite(x)
    assert all_finite(torch.tensor([3, 4])) and all_finite(torch.empty(0))


def test_non_finite_tensor_is_refused_with_its_name_unless_asked(tmp_path):
    sd = _tensors()
    sd["b.bias"][2] = float("nan")
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(NonFiniteTensorError, match=r"m\.safetensors'?: tensor 'b\.bias' \[5\] holds 1 NaN and 0 Inf"):
        load_state_dict(tmp_path / "m.safetensors")
    out = load_state_dict(tmp_path / "m.safetensors", check_finite=False)
    assert torch.isnan(out["b.bias"][2])
