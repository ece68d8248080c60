"""Every golden generation is bit-identical to its recording (tests/golden/cases.py says what and why)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from golden import cases

GOLDEN = json.loads(Path(__file__).with_name("golden.json").read_text())


def test_every_case_is_recorded():
    assert sorted(GOLDEN["cases"]) == sorted(cases.CASES)


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_bit_identical(name):
    if GOLDEN["environment"] != cases.environment():
        pytest.skip(f"recorded with {GOLDEN['environment']}, running {cases.environment()}: "
                    "re-record with tests/golden/record.py before changing the code")
    got = cases.run_case(name)
    want = GOLDEN["cases"][name]
    assert got["num_frames"] == want["num_frames"] and got["frame_shape"] == want["frame_shape"]
    assert got["latents"] == want["latents"], f"{name}: final latents changed (frame mean {got['frame_mean']} vs {want['frame_mean']})"
    assert got["frames"] == want["frames"], f"{name}: frames changed (mean {got['frame_mean']} vs {want['frame_mean']})"
