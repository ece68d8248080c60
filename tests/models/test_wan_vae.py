"""Wan2.1 video VAE: checkpoint layout, diffusers parity, chunked cache vs whole sequence, tiling, key mapping,
bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffsynth.configs import WanVAEConfig
from diffsynth.loading.diffusers_vae import (is_diffusers_vae_state_dict, vae_diffusers_to_official,
                                             vae_official_to_diffusers)
from diffsynth.models.wan_vae import WanVideoVAE, tile_starts

TINY = WanVAEConfig(dim=8, z_dim=16)                       # dim_mult (1,2,4,4): widths 8, 16, 32
# another layout: one residual block per stage, temporal steps in other stages, z_dim 4
TINY_ONE_BLOCK = WanVAEConfig(dim=4, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                              temporal_downsample=(True, True, False), latents_mean=(0.1, -0.2, 0.3, 0.0),
                              latents_std=(1.5, 0.5, 2.0, 1.0))


def randomize_vae_(vae: WanVideoVAE, seed: int = 0) -> WanVideoVAE:
    """Seeded random weights that keep activations O(1): conv weights ~ N(0, 1/fan_in), gammas ~ 1 +- 0.3 (the
    default init would leave every gamma at 1 and biases at 0, hiding mapping mistakes). The decoder head is scaled
    down so that most decoded values stay inside [-1, 1] and the clamp hides nothing."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(vae.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if name.endswith("gamma"):
                value = 1.0 + 0.3 * noise
            elif name.endswith("bias"):
                value = 0.1 * noise
            else:
                value = noise / math.sqrt(p[0].numel())
            if name.startswith("decoder.head.2"):
                value = value * 0.25
            p.copy_(value.to(p.dtype))
    return vae.eval()


def tiny_vae(config: WanVAEConfig = TINY, seed: int = 0) -> WanVideoVAE:
    return randomize_vae_(WanVideoVAE(config), seed)


def random_video(shape, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1).to(dtype)


# ---------------------------------------------------------------------------------------- checkpoint layout
def official_vae_template() -> dict:
    """Key -> shape of `Wan2.1_VAE.pth`, written from the spec's pattern list (wan-architecture 2.6)."""
    t = {}

    def conv(name, weight_shape):
        t[name + ".weight"], t[name + ".bias"] = tuple(weight_shape), (weight_shape[0],)

    conv("encoder.conv1", (96, 3, 3, 3, 3))
    conv("decoder.conv1", (384, 16, 3, 3, 3))
    conv("conv1", (32, 32, 1, 1, 1))
    conv("conv2", (16, 16, 1, 1, 1))
    residual_blocks = {
        **{f"encoder.downsamples.{i}": (96, 96) for i in (0, 1)},
        "encoder.downsamples.3": (96, 192), "encoder.downsamples.4": (192, 192),
        "encoder.downsamples.6": (192, 384), "encoder.downsamples.7": (384, 384),
        **{f"encoder.downsamples.{i}": (384, 384) for i in (9, 10)},
        **{f"{part}.middle.{i}": (384, 384) for part in ("encoder", "decoder") for i in (0, 2)},
        **{f"decoder.upsamples.{i}": (384, 384) for i in (0, 1, 2, 5, 6)},
        "decoder.upsamples.4": (192, 384),
        **{f"decoder.upsamples.{i}": (192, 192) for i in (8, 9, 10)},
        **{f"decoder.upsamples.{i}": (96, 96) for i in (12, 13, 14)},
    }
    for p, (i, o) in residual_blocks.items():
        t[p + ".residual.0.gamma"] = (i, 1, 1, 1)
        conv(p + ".residual.2", (o, i, 3, 3, 3))
        t[p + ".residual.3.gamma"] = (o, 1, 1, 1)
        conv(p + ".residual.6", (o, o, 3, 3, 3))
        if i != o:
            conv(p + ".shortcut", (o, i, 1, 1, 1))
    for p in ("encoder.middle.1", "decoder.middle.1"):
        t[p + ".norm.gamma"] = (384, 1, 1)
        conv(p + ".to_qkv", (1152, 384, 1, 1))
        conv(p + ".proj", (384, 384, 1, 1))
    conv("encoder.downsamples.2.resample.1", (96, 96, 3, 3))
    conv("encoder.downsamples.5.resample.1", (192, 192, 3, 3))
    conv("encoder.downsamples.5.time_conv", (192, 192, 3, 1, 1))
    conv("encoder.downsamples.8.resample.1", (384, 384, 3, 3))
    conv("encoder.downsamples.8.time_conv", (384, 384, 3, 1, 1))
    for i in (3, 7):
        conv(f"decoder.upsamples.{i}.resample.1", (192, 384, 3, 3))
        conv(f"decoder.upsamples.{i}.time_conv", (768, 384, 3, 1, 1))
    conv("decoder.upsamples.11.resample.1", (96, 192, 3, 3))
    t["encoder.head.0.gamma"] = (384, 1, 1, 1)
    conv("encoder.head.2", (32, 384, 3, 3, 3))
    t["decoder.head.0.gamma"] = (96, 1, 1, 1)
    conv("decoder.head.2", (3, 96, 3, 3, 3))
    return t


def test_default_config_matches_official_checkpoint_layout():
    with torch.device("meta"):
        vae = WanVideoVAE()
    got = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    expected = official_vae_template()
    assert len(expected) == 194
    assert set(got) == set(expected), (sorted(set(got) - set(expected)), sorted(set(expected) - set(got)))
    assert got == expected
    assert sum(p.numel() for p in vae.parameters()) == 126_892_531
    # latent statistics are real, non-persistent buffers even on a meta-built model
    assert not vae.mean.is_meta and "mean" not in vae.state_dict()
    assert vae.inv_std[0].item() == pytest.approx(1 / 2.8184)


# ---------------------------------------------------------------------------------------- diffusers parity
def diffusers_vae(config: WanVAEConfig):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=config.dim, z_dim=config.z_dim, dim_mult=list(config.dim_mult),
                            num_res_blocks=config.num_res_blocks, attn_scales=list(config.attn_scales),
                            temperal_downsample=list(config.temporal_downsample),
                            latents_mean=list(config.latents_mean), latents_std=list(config.latents_std)).eval()


@pytest.fixture(scope="module")
def vae_pair():
    vae = tiny_vae()
    reference = diffusers_vae(TINY)
    reference.load_state_dict(vae_official_to_diffusers(vae.state_dict()), strict=True)
    return vae, reference


@torch.no_grad()
def test_encode_matches_diffusers(vae_pair):
    vae, reference = vae_pair
    video = random_video((1, 3, 9, 32, 48))
    ours = vae.encode_raw(video)
    theirs = reference.encode(video).latent_dist.mean
    assert ours.shape == (1, 16, 3, 4, 6)
    assert ours.abs().mean() > 0.1
    assert (ours - theirs).abs().max() <= 1e-5
    # the normalised API is (mu - mean) / std per channel
    normalised = vae.encode(video)
    std = torch.tensor(TINY.latents_std).view(1, -1, 1, 1, 1)
    mean = torch.tensor(TINY.latents_mean).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(normalised, (ours - mean) / std, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_decode_matches_diffusers(vae_pair):
    vae, reference = vae_pair
    z = random_video((1, 16, 3, 4, 6), seed=2) * 2
    ours = vae.decode_raw(z)
    theirs = reference.decode(z).sample
    assert ours.shape == (1, 3, 9, 32, 48)
    assert (ours.abs() < 0.99).float().mean() > 0.9, "outputs mostly saturated: the clamp would hide differences"
    assert (ours.clamp(-1, 1) - theirs).abs().max() <= 1e-5
    # decode() = de-normalise (z / inv_std + mean), decode, clamp
    inv_std = 1 / torch.tensor(TINY.latents_std).view(1, -1, 1, 1, 1)
    mean = torch.tensor(TINY.latents_mean).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(vae.decode((z - mean) * inv_std), theirs, rtol=0, atol=2e-5)


# ------------------------------------------------------------------ chunked cache vs whole-sequence form
# An independent, whole-sequence implementation of spec 2.2-2.4, reading only the official state dict.
def _rms(x, gamma):
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) * math.sqrt(x.shape[1]) * gamma


def _causal(x, sd, name):
    """Ordinary causal conv over the whole sequence: kt-1 zero frames in front, 'same' spatial padding."""
    w, b = sd[name + ".weight"], sd[name + ".bias"]
    kt, kh = w.shape[2], w.shape[3]
    return F.conv3d(F.pad(x, (kh // 2, kh // 2, kh // 2, kh // 2, kt - 1, 0)), w, b)


def _residual_block(x, sd, p):
    h = F.conv3d(x, sd[p + "shortcut.weight"], sd[p + "shortcut.bias"]) if p + "shortcut.weight" in sd else x
    x = _causal(F.silu(_rms(x, sd[p + "residual.0.gamma"])), sd, p + "residual.2")
    x = _causal(F.silu(_rms(x, sd[p + "residual.3.gamma"])), sd, p + "residual.6")
    return x + h


def _attention(x, sd, p):
    b, c, t, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    qkv = F.conv2d(_rms(frames, sd[p + "norm.gamma"]), sd[p + "to_qkv.weight"], sd[p + "to_qkv.bias"])
    q, k, v = qkv.flatten(2).split(c, dim=1)                                   # each [b*t, c, h*w]
    attn = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(c), dim=-1)
    out = torch.einsum("nqk,nck->ncq", attn, v).reshape(b * t, c, h, w)
    out = F.conv2d(out, sd[p + "proj.weight"], sd[p + "proj.bias"])
    return x + out.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _per_frame(x, fn):
    b, c, t, h, w = x.shape
    y = fn(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


def _downsample(x, sd, p):
    w, b = sd[p + "resample.1.weight"], sd[p + "resample.1.bias"]
    x = _per_frame(x, lambda f: F.conv2d(F.pad(f, (0, 1, 0, 1)), w, b, stride=2))
    if p + "time_conv.weight" in sd:  # frame 0 passes; stride-2 conv over the whole sequence from frame 0
        later = F.conv3d(x, sd[p + "time_conv.weight"], sd[p + "time_conv.bias"], stride=(2, 1, 1))
        x = torch.cat([x[:, :, :1], later], dim=2)
    return x


def _upsample(x, sd, p):
    if p + "time_conv.weight" in sd:  # frame 0 passes; causal conv over frames 1.. ; channel halves interleaved
        c = x.shape[1]
        y = _causal(x[:, :, 1:], sd, p + "time_conv")
        pairs = torch.stack([y[:, :c], y[:, c:]], dim=3).flatten(2, 3)      # a1, b1, a2, b2, ...
        x = torch.cat([x[:, :, :1], pairs], dim=2)
    w, b = sd[p + "resample.1.weight"], sd[p + "resample.1.bias"]
    return _per_frame(x, lambda f: F.conv2d(f.repeat_interleave(2, 2).repeat_interleave(2, 3), w, b, padding=1))


def _layer(x, sd, p):
    if p + "residual.0.gamma" in sd:
        return _residual_block(x, sd, p)
    if p + "to_qkv.weight" in sd:
        return _attention(x, sd, p)
    return _downsample(x, sd, p) if p.startswith("encoder") else _upsample(x, sd, p)


def _stack(x, sd, prefix):
    for i in sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}):
        x = _layer(x, sd, f"{prefix}{i}.")
    return x


def _head(x, sd, p):
    return _causal(F.silu(_rms(x, sd[p + "head.0.gamma"])), sd, p + "head.2")


def whole_sequence_encode(sd, video, z_dim):
    x = _causal(video, sd, "encoder.conv1")
    x = _stack(x, sd, "encoder.downsamples.")
    x = _head(_stack(x, sd, "encoder.middle."), sd, "encoder.")
    return F.conv3d(x, sd["conv1.weight"], sd["conv1.bias"])[:, :z_dim]


def whole_sequence_decode(sd, z):
    x = _causal(F.conv3d(z, sd["conv2.weight"], sd["conv2.bias"]), sd, "decoder.conv1")
    x = _stack(_stack(x, sd, "decoder.middle."), sd, "decoder.upsamples.")
    return _head(x, sd, "decoder.")


@pytest.mark.parametrize("config", [TINY, TINY_ONE_BLOCK], ids=["tiny", "one_block"])
@torch.no_grad()
def test_chunked_cache_equals_whole_sequence_form(config):
    vae = tiny_vae(config).double()
    sd = vae.state_dict()
    video = random_video((1, 3, 13, 16, 24), seed=3, dtype=torch.float64)
    mu = vae.encode_raw(video)
    expected_mu = whole_sequence_encode(sd, video, config.z_dim)
    assert mu.shape == expected_mu.shape == (1, config.z_dim, 4, 2, 3)
    assert (mu - expected_mu).abs().max() < 1e-10

    z = random_video((1, config.z_dim, 3, 2, 3), seed=4, dtype=torch.float64)
    out = vae.decode_raw(z)
    expected = whole_sequence_decode(sd, z)
    assert out.shape == expected.shape == (1, 3, 9, 16, 24)
    assert (out - expected).abs().max() < 1e-10


@torch.no_grad()
def test_causality_first_latent_depends_only_on_first_frame():
    vae = tiny_vae()
    video = random_video((1, 3, 9, 16, 16))
    changed = video.clone()
    changed[:, :, 1:] = random_video((1, 3, 8, 16, 16), seed=9)
    a, b = vae.encode_raw(video), vae.encode_raw(changed)
    torch.testing.assert_close(a[:, :, 0], b[:, :, 0], rtol=0, atol=0)
    assert (a[:, :, 1:] - b[:, :, 1:]).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------------ tiling
def test_tile_starts_follow_spec_example():
    # 720p portrait (latent 160 x 90) with UniAnimate's (30, 52) / (15, 26): 10 x 3 = 30 tiles
    rows, cols = tile_starts(160, 30, 15), tile_starts(90, 52, 26)
    assert rows == list(range(0, 136, 15)) and cols == [0, 26, 52]


def spec_mask(height, width, bounds, border):
    """Tile weights from spec 2.8: per axis a ramp (1..b)/b on non-border sides, 2D = element-wise min."""
    def ramp(n, at_start, at_end, b):
        m = [1.0] * n
        if not at_start:
            m[:b] = [(i + 1) / b for i in range(b)]
        if not at_end:
            m[n - b:] = [(b - i) / b for i in range(b)]
        return torch.tensor(m, dtype=torch.float64)
    return torch.minimum(ramp(height, bounds[0], bounds[1], border[0])[:, None],
                         ramp(width, bounds[2], bounds[3], border[1])[None, :])


def manual_tiled(x, fn, unit_in, unit_out, size, stride, out_shape):
    """Reference blend: run fn on each tile and average with the spec masks, in float64."""
    size_px, stride_px = [s * unit_in for s in size], [s * unit_in for s in stride]
    border = [(a - b) * unit_out for a, b in zip(size, stride)]
    values, weights = torch.zeros(out_shape, dtype=torch.float64), torch.zeros(out_shape[-2:], dtype=torch.float64)
    H, W = x.shape[-2:]
    for h0 in tile_starts(H, size_px[0], stride_px[0]):
        for w0 in tile_starts(W, size_px[1], stride_px[1]):
            out = fn(x[..., h0:h0 + size_px[0], w0:w0 + size_px[1]]).double()
            mask = spec_mask(out.shape[-2], out.shape[-1],
                             (h0 == 0, h0 + size_px[0] >= H, w0 == 0, w0 + size_px[1] >= W), border)
            th, tw = h0 // unit_in * unit_out, w0 // unit_in * unit_out
            values[..., th:th + out.shape[-2], tw:tw + out.shape[-1]] += out * mask
            weights[th:th + out.shape[-2], tw:tw + out.shape[-1]] += mask
    return values / weights


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@torch.no_grad()
def test_tiled_decode_single_tile_equals_untiled(vae):
    z = random_video((1, 16, 2, 4, 6), seed=5)
    untiled = vae.decode(z)
    for size, stride in [((4, 6), (2, 3)), ((30, 52), (15, 26))]:
        tiled = vae.decode(z, tiled=True, tile_size=size, tile_stride=stride, progress=False)
        torch.testing.assert_close(tiled, untiled, rtol=0, atol=0)


@torch.no_grad()
def test_tiled_decode_blends_overlapping_tiles(vae):
    z = random_video((1, 16, 2, 6, 8), seed=6)
    tiled = vae.decode(z, tiled=True, tile_size=(4, 4), tile_stride=(2, 2), progress=False)   # 2 x 3 tiles
    mean = torch.tensor(TINY.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(TINY.latents_std).view(1, -1, 1, 1, 1)
    expected = manual_tiled(z, lambda t: vae.decode_raw(t * std + mean), 1, 8, (4, 4), (2, 2),
                            (1, 3, 5, 48, 64)).clamp(-1, 1)
    assert tiled.shape == (1, 3, 5, 48, 64) and torch.isfinite(tiled).all()
    assert (tiled.double() - expected).abs().max() < 1e-5


def _relative_mean_error(approx, exact):
    return ((approx - exact).abs().mean() / exact.abs().mean()).item()


def _correlation(a, b):
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


@torch.no_grad()
def test_tiled_is_close_to_untiled(vae):
    # Tiling is an approximation: each tile is zero-padded at its cut edges and the middle attention sees one tile.
    # Here 2 x 2 tiles of 12 latents overlap by 6, while the tiny decoder's receptive field is ~17 latents, so the
    # agreement is loose. Measured: decode mean error 19% of the mean |value|, correlation 0.978; encode 6%, 0.998.
    z = random_video((1, 16, 2, 16, 16), seed=6)
    tiled = vae.decode(z, tiled=True, tile_size=(12, 12), tile_stride=(6, 6), progress=False)
    untiled = vae.decode(z)
    assert _relative_mean_error(tiled, untiled) < 0.25 and _correlation(tiled, untiled) > 0.95

    video = random_video((1, 3, 5, 128, 128), seed=7)
    tiled = vae.encode(video, tiled=True, tile_size=(12, 12), tile_stride=(6, 6), progress=False)
    untiled = vae.encode(video)
    assert _relative_mean_error(tiled, untiled) < 0.1 and _correlation(tiled, untiled) > 0.99


@torch.no_grad()
def test_tiled_encode(vae):
    video = random_video((1, 3, 5, 48, 64), seed=7)
    untiled = vae.encode(video)
    one_tile = vae.encode(video, tiled=True, tile_size=(6, 8), tile_stride=(3, 4), progress=False)
    torch.testing.assert_close(one_tile, untiled, rtol=0, atol=0)

    tiled = vae.encode(video, tiled=True, tile_size=(4, 4), tile_stride=(2, 2), progress=False)  # 2 x 3 tiles
    expected = manual_tiled(video, vae.encode, 8, 1, (4, 4), (2, 2), (1, 16, 2, 6, 8))
    assert tiled.shape == (1, 16, 2, 6, 8)
    assert (tiled.double() - expected).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------- key mapping
@pytest.mark.parametrize("config", [WanVAEConfig(), TINY_ONE_BLOCK], ids=["wan2.1", "one_block"])
def test_key_mapping_matches_diffusers_layout(config):
    with torch.device("meta"):
        ours, theirs = WanVideoVAE(config), diffusers_vae(config)
    official, diffusers_sd = ours.state_dict(), theirs.state_dict()
    mapped = vae_official_to_diffusers(official)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in diffusers_sd.items()}
    back = vae_diffusers_to_official(diffusers_sd)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in official.items()}
    assert is_diffusers_vae_state_dict(diffusers_sd) and not is_diffusers_vae_state_dict(official)


def test_key_mapping_round_trips_and_loads_strictly():
    official = tiny_vae(TINY_ONE_BLOCK).state_dict()
    converted = vae_official_to_diffusers(official)
    diffusers_vae(TINY_ONE_BLOCK).load_state_dict(converted, strict=True)
    back = vae_diffusers_to_official(converted)
    assert list(back) == list(official)
    assert all(back[k] is official[k] for k in official)
    with pytest.raises(KeyError, match="encoder.unknown"):
        vae_official_to_diffusers({"encoder.unknown.weight": torch.zeros(1)})


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape, message", [
    ((3, 9, 16, 16), "batch axis"),
    ((1, 9, 3, 16, 16), "3 \\(RGB\\) channels"),
    ((1, 3, 8, 16, 16), "4k\\+1.*got 8.*Use 5 or 9"),
    ((1, 3, 9, 20, 16), "multiples of 8.*20x16"),
])
def test_bad_video_raises(vae, shape, message):
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.zeros(shape))


@pytest.mark.parametrize("shape, message", [
    ((16, 3, 4, 4), "batch axis"),
    ((1, 4, 3, 4, 4), "z_dim=16.*got 4"),
])
def test_bad_latents_raise(vae, shape, message):
    with pytest.raises(ValueError, match=message):
        vae.decode(torch.zeros(shape))


def test_unsupported_layout_raises():
    with pytest.raises(ValueError, match="dim_mult"):
        WanVideoVAE(WanVAEConfig(dim=4, dim_mult=(1, 2, 2), temporal_downsample=(True, False)))


def test_bad_tiling_raises(vae):
    with pytest.raises(ValueError, match="tile_stride"):
        vae.decode(torch.zeros(1, 16, 1, 4, 4), tiled=True, tile_size=(2, 2), tile_stride=(3, 2), progress=False)


@torch.no_grad()
@pytest.mark.parametrize("tiled, size, stride", [(False, None, None), (True, (4, 4), (2, 2)), (True, (3, 5), (2, 3)),
                                                 (True, (30, 52), (15, 26))])
def test_decode_iter_streams_the_one_shot_decode(vae, tiled, size, stride):
    """Chunks of 1, then 4 frames per latent frame; concatenated they are the one-shot decode, bit for bit (tiled:
    one causal cache per tile, blended per chunk)."""
    z = random_video((1, 16, 4, 6, 8), seed=11)
    kwargs = dict(tiled=True, tile_size=size, tile_stride=stride) if tiled else {}
    chunks = list(vae.decode_iter(z, **kwargs))
    assert [c.shape[2] for c in chunks] == [1, 4, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=2), vae.decode(z, progress=False, **kwargs))


def test_decode_iter_is_lazy_and_checks_its_input(vae):
    with pytest.raises(ValueError, match="z_dim"):
        vae.decode_iter(torch.zeros(1, 4, 2, 4, 4))
    stream = vae.decode_iter(random_video((1, 16, 3, 4, 4), seed=1), tiled=True, tile_size=(2, 2),
                             tile_stride=(1, 1))
    with torch.no_grad():
        assert next(stream).shape == (1, 3, 1, 32, 32)
    stream.close()
