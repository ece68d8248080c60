"""Attention backend selection: broken optional installs fall back, env/argument overrides, SDPA numerics."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from diffsynth.models import attention as attn


@pytest.fixture
def fresh_backends(monkeypatch, tmp_path):
    """Fake optional modules on sys.path, and empty selection caches before and after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("flash_attn_interface", "flash_attn", "sageattention"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delenv(attn.ENV_VAR, raising=False)
    attn._load_backend.cache_clear()
    attn._choose.cache_clear()
    yield tmp_path
    attn._load_backend.cache_clear()
    attn._choose.cache_clear()


def write_module(folder, name, body):
    (folder / f"{name}.py").write_text(body)


def test_any_import_failure_falls_back(fresh_backends):
    # A flash-attn wheel built for another torch typically fails with OSError/RuntimeError, not ModuleNotFoundError.
    write_module(fresh_backends, "flash_attn_interface", "raise OSError('undefined symbol: _ZN3c10')")
    write_module(fresh_backends, "flash_attn", "raise RuntimeError('CUDA version mismatch')")
    write_module(fresh_backends, "sageattention", "raise ImportError('No module named triton')")
    assert attn.resolve_backend() == "sdpa"


def test_first_importable_backend_wins(fresh_backends):
    write_module(fresh_backends, "flash_attn_interface", "raise OSError('broken')")
    write_module(fresh_backends, "flash_attn", "def flash_attn_func(q, k, v):\n    return q\n")
    assert attn.resolve_backend() == "flash_attn_2"


def test_environment_and_argument_override(fresh_backends, monkeypatch):
    write_module(fresh_backends, "sageattention", "def sageattn(q, k, v, tensor_layout='NHD'):\n    return q\n")
    monkeypatch.setenv(attn.ENV_VAR, "sdpa")
    assert attn.resolve_backend() == "sdpa"
    assert attn.resolve_backend("sage") == "sage"
    monkeypatch.setenv(attn.ENV_VAR, "flash_attn_9")
    with pytest.raises(ValueError, match="flash_attn_9"):
        attn.resolve_backend()


def test_choice_is_made_and_logged_once(fresh_backends, caplog):
    write_module(fresh_backends, "flash_attn", "raise RuntimeError('CUDA version mismatch')")
    with caplog.at_level("DEBUG", logger=attn.__name__):
        for _ in range(5):
            assert attn.resolve_backend() == "sdpa"
            assert attn.resolve_backend("flash_attn_2") == "sdpa"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("CUDA version mismatch" in m for m in messages) == 1        # the import was tried once
    assert sum(m.startswith("attention backend: sdpa") for m in messages) == 1
    assert sum("requested but not importable" in m for m in messages) == 1


def test_cpu_attention_matches_explicit_softmax():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 8, generator=gen, dtype=torch.float64) for n in (5, 7, 7))
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    expected = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v)
    torch.testing.assert_close(attn.attention(q, k, v, backend="flash_attn_3"), expected)
