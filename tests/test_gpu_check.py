"""benchmarks/gpu_check.py keeps working: the same code as on a GPU, at the tiny size on the CPU."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_every_tier_at_the_tiny_size(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "check.json"
    result = gpu_check.main(["--size", "tiny", "--steps", "2", "--out", str(out), "--skip", "vae"])
    assert json.loads(out.read_text()) == result
    tiers = {t["tier"]: t for t in result["tiers"]}
    assert {"all resident", "7B persistent", "0 persistent", "0 persistent, 720p", "fp8 + 0 persistent"} <= set(tiers)
    assert tiers["all resident"]["streamed_params"] == 0 and tiers["all resident"]["copies"] == 0
    assert 0 < tiers["7B persistent"]["streamed_params"] < tiers["0 persistent"]["streamed_params"]
    assert tiers["0 persistent"]["copies"] > 0
    assert result["dit_bytes_fp8"] < 0.6 * result["dit_bytes_bf16"]          # fp8 Linear weights
    assert all(t["s_per_step"] > 0 for t in result["tiers"])


def test_gpu_check_runs_on_the_simulated_device_and_pairs_figures(tmp_path, monkeypatch):
    """`--simulate` runs the same script on the shape-only device; a CUDA run then prints simulated next to measured."""
    spec = importlib.util.spec_from_file_location("gpu_check_sim", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "simulate.gpu_check_tiny.json"
    simulated = gpu_check.main(["--simulate", "--size", "tiny", "--steps", "2", "--out", str(out), "--skip",
                                "vae,720p"])
    assert simulated["simulated"] and json.loads(out.read_text()) == simulated
    tiers = {t["tier"]: t for t in simulated["tiers"]}
    assert tiers["0 persistent"]["copies"] > 0 and tiers["all resident"]["copies"] == 0
    monkeypatch.setattr(gpu_check, "simulated_file", lambda size: out)
    measured = {"tiers": [dict(t, peak_gpu_gb=2.0, simulated=False) for t in simulated["tiers"]]}
    simulated["tiers"][0]["peak_gpu_gb"] = 1.5
    out.write_text(json.dumps(simulated))
    gpu_check.attach_simulated(measured, "tiny", 2)
    assert measured["tiers"][0]["simulated_gb"] == 1.5 and measured["tiers"][0]["simulated_over_measured"] == 0.75
    gpu_check.attach_simulated(measured := {"tiers": [dict(simulated["tiers"][0])]}, "tiny", 3)   # other steps
    assert "simulated_gb" not in measured["tiers"][0]
