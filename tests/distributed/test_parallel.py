"""Multi-process generation on the CPU (gloo) under a real `torchrun`: 2, 3 and 4 ranks give the single-process latents
within 1e-5 (fp32), with cfg 1.5 and TeaCache on, for the short and the long-video pipelines: Ulysses sequence
parallel (25 tokens, which do not divide evenly), CFG parallel, FSDP-sharded weights, and ring attention on yunchang
(alone and inside Ulysses; ring needs a divisible token count: 30 and 40 tokens)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffsynth.distributed import ParallelConfig, item_shard, layout_groups

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("parallel_worker.py")


def launch(tmp_path, nproc, ulysses, cfg_parallel, fsdp=False, ring=1, width=80, check=True):
    out = tmp_path / f"out_{nproc}_{ulysses}_{int(cfg_parallel)}_{int(fsdp)}_{ring}_{width}.pt"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER),
           str(out), str(ulysses), str(int(cfg_parallel)), str(int(fsdp)), str(ring), str(width)]
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), str(ulysses), str(int(cfg_parallel)), "0", "1", str(width)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if not check:
        return result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    """Single-process results per video width (computed once each)."""
    folder, cache = tmp_path_factory.mktemp("single"), {}

    def get(width):
        if width not in cache:
            cache[width] = launch(folder, 1, 1, False, width=width)
        return cache[width]
    return get


@pytest.mark.parametrize("nproc, ulysses, cfg_parallel, fsdp, ring, width", [
    (2, 2, False, False, 1, 80), (3, 3, False, False, 1, 80), (2, 1, True, False, 1, 80),
    (2, 2, False, True, 1, 80),               # + DiT and umT5 weights sharded with FSDP2
    (2, 1, False, False, 2, 96),              # ring attention (yunchang), 30 tokens
    (4, 2, False, False, 2, 128)])            # Ulysses 2 inside ring 2, 40 tokens
def test_parallel_layouts_match_one_process(singles, tmp_path, nproc, ulysses, cfg_parallel, fsdp, ring, width):
    single = singles(width)
    got = launch(tmp_path, nproc, ulysses, cfg_parallel, fsdp, ring, width)
    for name in ("short", "long"):
        assert single[name + "_skipped"].sum() > 0                   # TeaCache really skipped steps
        # The same steps skipped on every layout (under CFG parallel rank 0 runs the conditional caches only).
        branch = slice(0, None, 2) if cfg_parallel else slice(None)
        assert torch.equal(got[name + "_skipped"][branch], single[name + "_skipped"][branch])
        torch.testing.assert_close(got[name], single[name], rtol=0, atol=1e-5)
        frames = (got[name + "_frames"].int() - single[name + "_frames"].int()).abs()
        assert frames.max() <= 1                                     # uint8 truncation of float noise


def test_ring_attention_refuses_an_uneven_token_count(tmp_path):
    result = launch(tmp_path, 2, 1, False, ring=2, width=80, check=False)      # 25 tokens over 2 ranks
    assert result.returncode != 0 and "ring attention needs the token count (25) divisible" in result.stderr


def test_refused_combinations_say_why():
    from diffsynth.distributed import ParallelState
    from diffsynth.acceleration import TeaCacheConfig
    from diffsynth.pipelines import GenerationRequest, WanUniAnimateVideoPipeline

    pipe = WanUniAnimateVideoPipeline(device="cpu")
    pipe.parallel = ParallelState(ParallelConfig(cfg_parallel=True), 0, 2, torch.device("cpu"))
    pipe._fsdp = True
    with pytest.raises(ValueError, match="step cache with CFG parallel and a sharded DiT"):
        pipe.step_caches(GenerationRequest(step_cache=TeaCacheConfig(0.1, "Wan2.1-I2V-14B-480P")), 4)
    assert pipe.step_caches(GenerationRequest(), 4) == [None, None]
    from diffsynth.models.wan_dit import WanModel
    from tests.tiny import TINY_I2V

    pipe.dit = WanModel(TINY_I2V)                                     # 2 heads
    with pytest.raises(ValueError, match="ulysses_size 3 must divide the DiT's 2 heads"):
        pipe.enable_parallel(ParallelState(ParallelConfig(ulysses_size=3), 0, 3, torch.device("cpu")))


def test_layout_groups_and_item_shard():
    config = ParallelConfig(ulysses_size=2, cfg_parallel=True)
    assert config.world_size == 4
    assert layout_groups(config) == ([[0, 1], [2, 3]], [[0, 2], [1, 3]])
    assert item_shard(list("abcdefg"), rank=1, world_size=3) == ["b", "e"]
    with pytest.raises(ValueError, match="ulysses_size must be an integer"):
        ParallelConfig(ulysses_size=0)
