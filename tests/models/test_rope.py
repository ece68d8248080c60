"""3D RoPE: upstream-exact float64 rotation in bounded chunks, the fp32 option, and the memory bound."""
from __future__ import annotations

import pytest
import torch

from diffsynth.models import layers
from diffsynth.models.layers import apply_rope, rope_freqs, rope_split, rope_table
from diffsynth.models.wan_dit import WanModel
from tiny import TINY_I2V, TINY_T2V


# --------------------------------------------------------------------------- upstream reference (written from spec)
def upstream_freqs(head_dim, grid):
    """Official `rope_params` per axis (1024 positions, float64 angles, torch.polar), split, expanded to the grid."""
    def table(dim):
        inv = 1.0 / torch.pow(10000, torch.arange(0, dim, 2).to(torch.float64).div(dim))
        angles = torch.outer(torch.arange(1024), inv)
        return torch.polar(torch.ones_like(angles), angles)
    tt, th, tw = table(head_dim - 4 * (head_dim // 6)), table(2 * (head_dim // 6)), table(2 * (head_dim // 6))
    f, h, w = grid
    return torch.cat([tt[:f].view(f, 1, 1, -1).expand(f, h, w, -1), th[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                      tw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)


def upstream_rope(x, freqs):
    """DiffSynth `rope_apply`: complex128 multiply of the whole tensor, result cast straight back."""
    b, s, n, _ = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, s, n, -1, 2))
    return torch.view_as_real(xc * freqs).flatten(3).to(x.dtype)


GRID, HEADS, HEAD_DIM = (4, 12, 20), 2, 128        # 960 tokens, 2 x 960 x 2 x 128 = 491,520 values per tensor


def activations(dtype, seed=0, batch=2, grid=GRID, head_dim=HEAD_DIM):
    gen = torch.Generator().manual_seed(seed)
    tokens = grid[0] * grid[1] * grid[2]
    return (torch.randn(batch, tokens, HEADS, head_dim, generator=gen, dtype=torch.float64) * 3).to(dtype)


# ------------------------------------------------------------------------------------------------------ tables
def test_phasor_table_is_bit_identical_to_upstream():
    assert rope_split(128) == (44, 42, 42) and rope_split(12) == (4, 4, 4) and rope_split(48) == (16, 16, 16)
    for head_dim, grid in [(128, GRID), (128, (21, 30, 52)), (12, (3, 5, 7))]:
        got = rope_freqs(grid, head_dim)
        assert got.dtype == torch.complex128 and got.shape == (grid[0] * grid[1] * grid[2], 1, head_dim // 2)
        assert torch.equal(got, upstream_freqs(head_dim, grid))
    with pytest.raises(ValueError, match="RoPE table length"):
        rope_freqs((1, 1025, 1), 12)


# ----------------------------------------------------------------------------------------- float64 (default)
# Head width 44 (22 pairs per row) makes torch's CPU complex multiply do the last pairs of each row in its scalar
# loop, which the compiler builds with fused multiply-adds: there `x1*cos - x2*sin` in float64 differs from the
# complex multiply in the last bit (a few % of all values), so a real-arithmetic "equivalent" fails here (it passes
# at 128 = 64 pairs, all vectorised, on AVX2/AVX-512). 128 is the real models' width.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64],
                         ids=["bf16", "fp16", "fp32", "fp64"])
@pytest.mark.parametrize("chunk_bytes", [None, 1, 3 * 2 * HEADS * HEAD_DIM * 8 + 5, 2**40],
                         ids=["default", "one-token", "3-tokens-ragged", "one-chunk"])
@pytest.mark.parametrize("head_dim, grid", [(HEAD_DIM, GRID), (44, (3, 10, 14))], ids=["dh128", "dh44"])
def test_float64_rotation_is_bit_identical_to_complex128_reference(dtype, chunk_bytes, head_dim, grid):
    x = activations(dtype, grid=grid, head_dim=head_dim)
    freqs = rope_freqs(grid, head_dim)
    expected = upstream_rope(x, upstream_freqs(head_dim, grid))
    got = apply_rope(x, rope_table(freqs, "float64", dtype), chunk_bytes=chunk_bytes)
    assert got.dtype == dtype and got.is_contiguous()
    assert torch.equal(got, expected)


def test_float64_rotation_leaves_a_float64_input_untouched():
    x = activations(torch.float64)
    before = x.clone()
    apply_rope(x, rope_table(rope_freqs(GRID, HEAD_DIM), "float64", x.dtype), chunk_bytes=1)
    assert torch.equal(x, before)


def test_chunked_rotation_gradients_match_the_reference():
    x = activations(torch.float64, batch=1).requires_grad_()
    weights = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    freqs = rope_freqs(GRID, HEAD_DIM)
    (upstream_rope(x, freqs) * weights).sum().backward()
    expected, x.grad = x.grad, None
    chunked = apply_rope(x, rope_table(freqs, "float64", x.dtype), chunk_bytes=7 * HEADS * HEAD_DIM * 8)
    (chunked * weights).sum().backward()
    torch.testing.assert_close(x.grad, expected, atol=1e-12, rtol=0)   # the inverse rotation of `weights`


# ------------------------------------------------------------------------------------------- float32 option
def test_float32_option_matches_within_tolerance():
    freqs = rope_freqs(GRID, HEAD_DIM)
    reference = upstream_freqs(HEAD_DIM, GRID)
    # fp32 activations: real cos/sin arithmetic in fp32, < 1e-6 relative from the complex128 result.
    x = activations(torch.float32)
    got = apply_rope(x, rope_table(freqs, "float32", x.dtype), chunk_bytes=4096)
    exact = torch.view_as_real(torch.view_as_complex(x.double().unflatten(-1, (-1, 2))) * reference).flatten(3)
    assert got.dtype == torch.float32
    assert ((got.double() - exact).norm() / exact.norm()).item() < 1e-6
    # bf16 activations: a rare rounding flip from the upstream result (fp32 instead of fp64 before rounding to
    # bf16): in < 1e-4 of the values, each by at most one bf16 ulp (2^-7 relative) or, where x1*cos - x2*sin
    # cancels, by the fp32 error of the products (2^-20 of the inputs' scale).
    x = activations(torch.bfloat16)
    got = apply_rope(x, rope_table(freqs, "float32", x.dtype))
    expected = upstream_rope(x, reference)
    assert (got != expected).float().mean().item() < 1e-4
    diff = (got.float() - expected.float()).abs()
    assert bool((diff <= expected.float().abs() * 2**-7 + x.float().abs().max() * 2**-20).all())


def test_float32_option_keeps_half_precision_and_identity_at_origin():
    x = torch.randn(1, 6, 2, 12, dtype=torch.bfloat16)
    for precision in ("float64", "float32"):
        out = apply_rope(x, rope_table(rope_freqs((1, 2, 3), 12), precision, x.dtype))
        assert out.dtype == torch.bfloat16
        assert torch.equal(out[:, 0], x[:, 0])       # position (0,0,0) has zero angle: identity rotation


# ----------------------------------------------------------------------------------------------- model option
def test_rope_precision_is_an_option_of_the_model():
    model = WanModel(TINY_T2V)
    assert model.rope_precision == "float64"
    grid, bf = (1, 2, 3), torch.zeros(1, dtype=torch.bfloat16)
    assert model.rope_for(grid, bf).dtype == torch.complex128
    model.rope_precision = "float32"                  # settable on a loaded model
    assert model.rope_for(grid, bf).dtype == torch.float32 and model.rope_for(grid, bf).shape == (6, 1, 6, 2)
    assert model.rope_for(grid, torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
    assert WanModel(TINY_T2V, rope_precision="float32").rope_precision == "float32"
    with pytest.raises(ValueError, match="rope_precision"):
        model.rope_precision = "fp64"
    with pytest.raises(ValueError, match="rope_precision"):
        WanModel(TINY_T2V, rope_precision="bfloat16")


# ---------------------------------------------------------------------------------------------- memory bound
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_forward_makes_no_full_size_float64_copy_of_q_or_k(precision, monkeypatch):
    """Upstream upcasts all of q and k to complex128 inside RoPE (1.34 GB each at 480p); we rotate in chunks."""
    from torch.utils import _pytree as pytree
    from torch.utils._python_dispatch import TorchDispatchMode

    import diffsynth.models.wan_dit as wan_dit

    class Float64Allocations(TorchDispatchMode):
        """Bytes of every new (non-view) float64/complex128 tensor, and whether `apply_rope` made it."""

        def __init__(self):
            super().__init__()
            self.sizes, self.in_rope = [], False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype in (torch.float64, torch.complex128) \
                        and t.untyped_storage().data_ptr() not in inputs:      # views and in-place ops: no
                    self.sizes.append((self.in_rope, t.untyped_storage().nbytes()))
            return out

    def traced_rope(*args, **kwargs):
        probe.in_rope = True
        try:
            return apply_rope(*args, **kwargs)
        finally:
            probe.in_rope = False

    cfg = TINY_I2V
    per_token = cfg.dim * 8                          # bytes of one token's float64 q (batch 1)
    monkeypatch.setattr(layers, "ROPE_CHUNK_BYTES", 8 * per_token)
    monkeypatch.setattr(wan_dit, "apply_rope", traced_rope)
    model = WanModel(cfg, rope_precision=precision).to(torch.bfloat16).eval()
    tokens = 5 * 8 * 8                                # a float64 q is 61 kB, 40 chunks
    x, y = torch.randn(1, 16, 5, 16, 16), torch.randn(1, 20, 5, 16, 16)
    with torch.no_grad(), Float64Allocations() as probe:
        out = model(x.bfloat16(), torch.tensor([999.0]).bfloat16(), torch.randn(1, 512, 32).bfloat16(),
                    clip_feature=torch.randn(1, 257, 16).bfloat16(), y=y.bfloat16())
    assert out.dtype == torch.bfloat16
    assert probe.sizes, "the sinusoid and the RoPE phasors are built in float64"
    # Nothing float64 is as large as a float64 copy of q: only the phasor table ([L, 1, dh/2], half that size)
    # and the sinusoid are whole.
    assert max(nbytes for _, nbytes in probe.sizes) < tokens * per_token
    # Inside the rotation: float64 chunks of at most ROPE_CHUNK_BYTES (float64 mode), nothing (float32 mode).
    chunks = [nbytes for in_rope, nbytes in probe.sizes if in_rope]
    if precision == "float64":
        assert chunks and max(chunks) <= 8 * per_token
    else:
        assert not chunks
