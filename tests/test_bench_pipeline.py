"""benchmarks/bench_pipeline.py keeps working: every section at the tiny size on the CPU (compile: slow test)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_common(result, out):
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert out.with_suffix(".md").read_text().startswith("# bench_pipeline")
    assert not result["errors"]
    assert result["size"] == "tiny" and result["threads"] >= 1 and result["torch"]


def test_bench_pipeline_tiny_runs_fast_caches_and_cfg(tmp_path):
    out = tmp_path / "bench.json"
    result = load_script().main(["--tiny", "--skip", "compile", "--out", str(out)])
    check_common(result, out)
    steps = result["steps"]
    # 1. the fast preset: 4 steps of one branch; the default: every step, both branches
    fast = result["fast"]
    assert fast["ratio"] > 0 and result["runs"]["fast"][0]["steps"] == 4
    assert result["runs"]["default"][0]["computed_actual"] == [None, None]   # no cache object
    # 2. caches: the plan matches what the caches did, and skipping changes the output
    rows = {r["name"]: r for r in result["caches"]["rows"]}
    assert len(rows) == 5 and rows["no cache"]["speedup"] == 1.0
    for name, row in rows.items():
        plan = row["computed_plan"]
        assert row["computed_actual"] == [plan["positive"], plan["negative"]], name
        if name != "no cache":
            assert row["speedup"] > 0 and row["vs_uncached"]["latents_mean_abs"] > 0
            assert plan["positive"] < steps   # the tiny thresholds skip something
    # 3. batched CFG: same result up to float rounding
    cfg = result["cfg"]
    assert cfg["ratio"] > 0 and cfg["diff"]["latents_max_abs"] < 1e-4
    assert "compile" not in result


@pytest.mark.slow
def test_bench_pipeline_tiny_compile(tmp_path):
    """The compile section (inductor on the CPU, ~10-30 s of compiling)."""
    out = tmp_path / "bench.json"
    result = load_script().main(["--tiny", "--skip", "fast", "caches", "--out", str(out)])
    check_common(result, out)
    comp = result["compile"]
    assert comp["first_call_s"] > 0 and comp["ratio"] > 0 and comp["unique_graphs"] >= 1
    assert comp["diff"]["latents_max_abs"] < 1e-3
