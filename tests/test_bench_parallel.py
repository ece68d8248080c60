"""benchmarks/bench_parallel.py: the communication formula against a hand computation, and a smoke run (slow)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("bench_parallel", ROOT / "benchmarks" / "bench_parallel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ulysses_bytes_match_a_hand_computation():
    bench = load()
    # 480p, 8 ranks: local q is 32760/8 tokens x 5120 x 2 bytes = 41.93 MB; 4 all-to-alls send 7/8 of it per block,
    # 40 blocks, 2 CFG branches; plus the head gather (64 values per token, 7 shards received).
    local = 32760 / 8 * 5120 * 2
    expected = 2 * (40 * 4 * local * 7 / 8 + 32760 / 8 * 64 * 2 * 7)
    assert bench.ulysses_bytes_per_step(32760, 8) == pytest.approx(expected)
    assert bench.TOKENS["480p"] == 32760 and bench.TOKENS["720p"] == 75600


@pytest.mark.slow
def test_smoke_run_writes_the_tables(tmp_path):
    bench = load()
    results = bench.main(["--smoke", "--out", str(tmp_path / "bp.json")])
    assert set(results["measured_cpu"]) == {"single", "ulysses", "cfg"}
    assert results["estimate_8gpu_480p"]["speedup_8gpu_estimate"] < 8
    assert (tmp_path / "bp.md").read_text().startswith("# bench_parallel")
