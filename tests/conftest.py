"""Shared fixtures (tiny configs live in tests/tiny.py, importable as `tiny`)."""
from __future__ import annotations

import pytest

from tiny import TINY_I2V, TINY_T2V
from diffsynth.configs import WanDiTConfig


@pytest.fixture
def tiny_i2v_config() -> WanDiTConfig:
    return TINY_I2V


@pytest.fixture
def tiny_t2v_config() -> WanDiTConfig:
    return TINY_T2V
