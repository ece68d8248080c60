"""umT5 encoder: official checkpoint layout, bucket function, parity with transformers' UMT5EncoderModel."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffsynth.configs import UMT5Config
from diffsynth.loading.transformers_keys import t5_official_to_transformers, t5_transformers_to_official
from diffsynth.models.wan_text_encoder import WanTextEncoder, relative_position_bucket
from tiny import randomize_

TINY_T5 = UMT5Config(vocab_size=100, dim=64, dim_attn=64, dim_ffn=96, num_heads=4, num_layers=2,
                     num_buckets=32, max_distance=128, eps=1e-6)
PARITY_ATOL = 1e-5  # fp32, tiny config


def official_t5_template(vocab=256384, dim=4096, dim_attn=4096, ffn=10240, heads=64, layers=24, buckets=32):
    """Key -> shape of `models_t5_umt5-xxl-enc-bf16.pth`, written from the spec table (wan-architecture 3.3)."""
    t = {"token_embedding.weight": (vocab, dim), "norm.weight": (dim,)}
    for i in range(layers):
        p = f"blocks.{i}."
        t.update({
            p + "norm1.weight": (dim,),
            p + "attn.q.weight": (dim_attn, dim), p + "attn.k.weight": (dim_attn, dim),
            p + "attn.v.weight": (dim_attn, dim), p + "attn.o.weight": (dim, dim_attn),
            p + "pos_embedding.embedding.weight": (buckets, heads),
            p + "norm2.weight": (dim,),
            p + "ffn.gate.0.weight": (ffn, dim), p + "ffn.fc1.weight": (ffn, dim), p + "ffn.fc2.weight": (dim, ffn),
        })
    return t


def test_full_size_layout_matches_official_file():
    with torch.device("meta"):
        model = WanTextEncoder(UMT5Config())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == official_t5_template()
    assert len(shapes) == 242
    assert sum(p.numel() for p in model.parameters()) == 5_680_910_336
    assert model.token_embedding.weight.numel() == 1_050_148_864


# Spec 3.2: |r| ranges -> bucket (r <= 0); r > 0 adds 16.
BUCKET_TABLE = [((0, 7), None), ((8, 11), 8), ((12, 15), 9), ((16, 22), 10), ((23, 31), 11), ((32, 45), 12),
                ((46, 63), 13), ((64, 90), 14), ((91, 600), 15)]


def test_relative_position_bucket_table():
    for (lo, hi), bucket in BUCKET_TABLE:
        a = torch.arange(lo, hi + 1)
        expected = a if bucket is None else torch.full_like(a, bucket)
        assert torch.equal(relative_position_bucket(-a), expected), (lo, hi)
        positive = a[a > 0]
        assert torch.equal(relative_position_bucket(positive), expected[a > 0] + 16), (lo, hi)


def test_relative_position_bucket_matches_transformers():
    from transformers.models.umt5.modeling_umt5 import UMT5Attention

    rel = torch.arange(-700, 700)
    ours = relative_position_bucket(rel, 32, 128)
    encoder_attn = SimpleNamespace(relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                   is_decoder=False)
    theirs = UMT5Attention._relative_position_bucket(encoder_attn, rel)
    assert torch.equal(ours, theirs)


def _hf_tiny_encoder():
    from transformers import UMT5Config as HFUMT5Config, UMT5EncoderModel

    cfg = HFUMT5Config(vocab_size=100, d_model=64, d_kv=16, num_heads=4, d_ff=96, num_layers=2,
                       relative_attention_num_buckets=32, relative_attention_max_distance=128,
                       feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0)
    return UMT5EncoderModel(cfg).eval()


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (2, 40), generator=gen)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 25:] = 0  # second row: 15 padding positions
    return ids, mask


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    ours = randomize_(WanTextEncoder(TINY_T5), seed=1, std=0.2).eval()
    hf = _hf_tiny_encoder()
    missing, unexpected = hf.load_state_dict(t5_official_to_transformers(ours.state_dict()), strict=True)
    assert not missing and not unexpected
    return ours, hf


def test_parity_with_transformers_umt5(tiny_pair):
    ours, hf = tiny_pair
    ids, mask = _inputs()
    with torch.no_grad():
        out = ours(ids, mask)
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.shape == (2, 40, 64)
    assert out.abs().mean() > 0.1  # not degenerate
    # Both implementations mask keys only, so padded query rows agree too.
    assert (out - ref).abs().max().item() <= PARITY_ATOL


def test_padding_keys_do_not_leak(tiny_pair):
    ours, _ = tiny_pair
    ids, mask = _inputs()
    ids2 = ids.clone()
    ids2[1, 25:] = (ids2[1, 25:] + 7) % 100
    with torch.no_grad():
        a, b = ours(ids, mask), ours(ids2, mask)
    assert torch.equal(a[0], b[0])
    assert (a[1, :25] - b[1, :25]).abs().max() <= 1e-6
    assert not torch.allclose(a[1, 25:], b[1, 25:])  # the padded rows themselves do change


def test_bf16_runs_with_bf16_output(tiny_pair):
    ours, _ = tiny_pair
    ids, mask = _inputs()
    half = WanTextEncoder(TINY_T5).to(torch.bfloat16)
    half.load_state_dict(ours.state_dict())
    with torch.no_grad():
        out, ref = half(ids, mask), ours(ids, mask)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() <= 0.1 * ref.abs().max()


def test_key_mapping_round_trip_and_unknown_keys(tiny_pair):
    ours, hf = tiny_pair
    sd = ours.state_dict()
    hf_sd = t5_official_to_transformers(sd)
    assert set(hf_sd) == set(hf.state_dict())
    back = t5_transformers_to_official(hf_sd)
    assert set(back) == set(sd) and all(back[k] is sd[k] for k in sd)
    with pytest.raises(ValueError, match="blocks.0.attn.x.weight"):
        t5_official_to_transformers({**sd, "blocks.0.attn.x.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="decoder"):
        t5_transformers_to_official({**hf_sd, "decoder.final_layer_norm.weight": torch.zeros(1)})
