"""The one DiT forward: block-cache hook with per-item caches, embedded context, partial-batch conditions, RoPE cache."""
from __future__ import annotations

import torch

from diffsynth.models.wan_dit import EmbeddedContext, WanModel, run_cached_blocks
from tests.tiny import TINY_I2V, randomize_


def model_and_inputs(batch=2, seed=0):
    model = randomize_(WanModel(TINY_I2V), seed=seed, std=0.2).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).float()  # noqa: E731
    x = r(batch, 16, 3, 4, 6)
    inputs = dict(x=x, timestep=torch.tensor([700.0]), context=r(batch, 7, 32), clip_feature=r(batch, 5, 16),
                  y=r(batch, 20, 3, 4, 6))
    return model, inputs


class Scripted:
    """A step cache with scripted decisions; reuse adds the stored residual (as TeaCache does)."""

    def __init__(self, decisions):
        self.decisions, self.residual, self.calls = list(decisions), None, []

    def should_compute(self, modulation):
        self.calls.append(modulation.shape)
        return self.decisions.pop(0)

    def store(self, blocks_in, blocks_out):
        self.residual = blocks_out - blocks_in

    def reuse(self, blocks_in):
        return blocks_in + self.residual


@torch.no_grad()
def test_batched_forward_with_per_item_caches_equals_each_item_alone():
    model, inp = model_and_inputs()
    items = [{k: (v[i:i + 1] if k != "timestep" else v) for k, v in inp.items()} for i in range(2)]
    # Step 1: both compute; step 2: item 0 reuses, item 1 computes; step 3: item 1 reuses, item 0 computes.
    script = [[True, False, True], [True, True, False]]
    batched = [Scripted(s) for s in script]
    alone = [Scripted(s) for s in script]
    for step in range(3):
        t = torch.tensor([900.0 - 200 * step])
        out = model(**dict(inp, timestep=t), block_cache=batched)
        for i in range(2):
            expected = model(**dict(items[i], timestep=t), block_cache=[alone[i]])
            torch.testing.assert_close(out[i:i + 1], expected, rtol=1e-5, atol=1e-5)
    assert all(shape == (1, 6, TINY_I2V.dim) for c in batched for shape in c.calls)   # each sees its own item


def test_run_cached_blocks_computes_only_the_items_that_run():
    tokens = torch.arange(12.0).view(3, 2, 2)
    current, seen = [tokens], []

    def compute(indices):
        seen.append(indices)
        picked = current[0] if indices is None else current[0][indices]
        return picked * 10

    caches = [Scripted([True, False]), None, Scripted([True, True])]
    first = run_cached_blocks(caches, tokens, torch.zeros(3, 6, 2), compute)
    assert seen == [None] and torch.equal(first, tokens * 10)
    current[0] = tokens + 1
    second = run_cached_blocks(caches, tokens + 1, torch.zeros(3, 6, 2), compute)
    assert seen[-1] == [1, 2]                                          # item 0 reused its residual
    torch.testing.assert_close(second[0], (tokens[0] + 1) + 9 * tokens[0])
    torch.testing.assert_close(second[1:], (tokens[1:] + 1) * 10)


@torch.no_grad()
def test_embedded_context_and_partial_condition_equal_the_plain_forward():
    model, inp = model_and_inputs()
    ctx = model.embed_context(inp["context"], inp["clip_feature"])
    assert isinstance(ctx, EmbeddedContext)
    plain = model(**inp)
    torch.testing.assert_close(model(**dict(inp, context=ctx, clip_feature=None)), plain, rtol=0, atol=0)
    grid_tokens = 3 * 2 * 3
    cond = torch.randn(1, grid_tokens, TINY_I2V.dim)
    with_cond = model(**inp, add_condition=cond)
    full = torch.cat([cond, torch.zeros_like(cond)])
    torch.testing.assert_close(with_cond, model(**inp, add_condition=full), rtol=0, atol=0)
    assert not torch.allclose(with_cond[:1], plain[:1])          # the condition reached item 0
    torch.testing.assert_close(with_cond[1:], plain[1:], rtol=0, atol=0)   # and only item 0


def test_rope_table_is_kept_for_the_same_grid_and_rebuilt_for_another():
    model, _ = model_and_inputs()
    x = torch.zeros(1, dtype=torch.float32)
    first = model.rope_for((3, 2, 3), x)
    assert model.rope_for((3, 2, 3), x) is first
    other = model.rope_for((4, 2, 3), x)
    assert other.shape[0] == 24 and other is not first
    model.rope_precision = "float32"
    assert model.rope_for((4, 2, 3), x).dtype != other.dtype      # precision is part of the key
