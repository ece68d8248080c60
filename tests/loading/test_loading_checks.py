"""The shared key/shape comparison and its compact summaries."""
from __future__ import annotations

import torch

from diffsynth.loading.checks import compare_state_dict, format_ranges, summarize_keys


def _blocks(n: int, per_block=("a.weight", "a.bias", "b.weight")):
    return [f"blocks.{i}.{leaf}" for i in range(n) for leaf in per_block]


def test_format_ranges():
    assert format_ranges([7, 0, 1, 2, 5, 8]) == "0-2, 5, 7-8"
    assert format_ranges([3]) == "3" and format_ranges([]) == ""


def test_whole_blocks_become_ranges_and_partial_blocks_are_counted():
    universe = _blocks(40) + ["head.weight", "head.bias"]
    missing = _blocks(40)[20 * 3:] + ["blocks.3.a.bias", "head.weight"]
    assert summarize_keys(missing, universe) == \
        "blocks 20-39; blocks.3: 1 of 3 tensors (e.g. blocks.3.a.bias); head.weight"
    assert summarize_keys(["blocks.7.a.weight"], universe) == "blocks.7: 1 of 3 tensors (e.g. blocks.7.a.weight)"
    # Without a universe, any listed key stands for its block.
    assert summarize_keys(["blocks.7.a.weight", "blocks.8.b.weight"]) == "blocks 7-8"


def test_loose_keys_are_capped():
    keys = [f"k{i}" for i in range(10)]
    assert summarize_keys(keys, limit=3) == "k0, k1, k2, ... (10 other keys)"


def test_compare_state_dict_accepts_shapes_or_tensors():
    expected = {"w": (2, 3), "b": torch.zeros(2), "opt": (1,)}
    found = {"w": torch.zeros(3, 2), "extra": (1,)}
    diff = compare_state_dict(expected, found, optional=["opt"])
    assert diff.missing == ["b"] and diff.unexpected == ["extra"] and diff.mismatched == [("w", (3, 2), (2, 3))]
    assert not diff.ok and diff.bad_keys == {"w", "extra"}
    assert diff.lines() == ["1 missing: b", "1 unexpected: extra", "1 shape mismatches: w: file [3, 2], model [2, 3]"]
    assert compare_state_dict(expected, {"w": (2, 3), "b": (2,)}, optional=["opt"]).ok
