"""CLIP ViT-H/14 visual tower: official layout, parity with transformers' CLIPVisionModel, preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsynth.configs import ClipVisionConfig
from diffsynth.loading.transformers_keys import (
    clip_visual_official_to_transformers, clip_visual_transformers_to_official,
)
from diffsynth.models.wan_image_encoder import WanImageEncoder, preprocess_clip_image
from tiny import randomize_

TINY_CLIP = ClipVisionConfig(image_size=56, patch_size=14, dim=64, mlp_dim=256, num_heads=4, num_layers=4,
                             out_dim=32, use_layers=3)
PARITY_ATOL = 1e-5  # fp32, tiny config


def official_clip_visual_template(dim=1280, mlp=5120, layers=32, patch=14, tokens=257, out_dim=1024):
    """Key -> shape of the `visual.*` tensors of the Wan CLIP file, from the spec table (wan-architecture 4.4)."""
    t = {
        "visual.patch_embedding.weight": (dim, 3, patch, patch),
        "visual.cls_embedding": (1, 1, dim), "visual.pos_embedding": (1, tokens, dim),
        "visual.pre_norm.weight": (dim,), "visual.pre_norm.bias": (dim,),
        "visual.post_norm.weight": (dim,), "visual.post_norm.bias": (dim,),
        "visual.head": (dim, out_dim),
    }
    for i in range(layers):
        p = f"visual.transformer.{i}."
        t.update({
            p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
            p + "attn.to_qkv.weight": (3 * dim, dim), p + "attn.to_qkv.bias": (3 * dim,),
            p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
            p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
            p + "mlp.0.weight": (mlp, dim), p + "mlp.0.bias": (mlp,),
            p + "mlp.2.weight": (dim, mlp), p + "mlp.2.bias": (dim,),
        })
    return t


def test_full_size_layout_matches_official_file():
    with torch.device("meta"):
        model = WanImageEncoder(ClipVisionConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == official_clip_visual_template()
    assert len(shapes) == 392
    assert sum(p.numel() for p in model.parameters()) == 632_076_800


def test_full_size_forward_shape_on_meta():
    with torch.device("meta"):
        model = WanImageEncoder(ClipVisionConfig())
        out = model(torch.empty(2, 3, 224, 224))
    assert out.shape == (2, 257, 1280)


@pytest.fixture(scope="module")
def tiny_pair():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    ours = randomize_(WanImageEncoder(TINY_CLIP), seed=2, std=0.2).eval()
    hf_cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                              image_size=56, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=32)
    hf = CLIPVisionModelWithProjection(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(clip_visual_official_to_transformers(ours.state_dict()), strict=True)
    assert not missing and not unexpected
    return ours, hf


def test_parity_with_transformers_clip_vision(tiny_pair):
    ours, hf = tiny_pair
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = ours(pixels)
        ref = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert out.shape == (2, 17, 64)
    assert out.abs().mean() > 0.05  # not degenerate
    assert (out - ref).abs().max().item() <= PARITY_ATOL
    # All blocks + post_norm + head against the projection output (checks the head transpose).
    with torch.no_grad():
        v = ours.visual
        full = v(pixels)
        image_embeds = v.post_norm(full[:, 0]) @ v.head
        ref_embeds = hf(pixel_values=pixels).image_embeds
    assert (image_embeds - ref_embeds).abs().max().item() <= PARITY_ATOL


def test_key_mapping_round_trip(tiny_pair):
    ours, hf = tiny_pair
    sd = ours.state_dict()
    back = clip_visual_transformers_to_official(hf.state_dict())
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # The full official file also holds the text tower and log_scale: skipped, not errors.
    extra = {"textual.token_embedding.weight": torch.zeros(3, 2), "log_scale": torch.zeros(())}
    assert set(clip_visual_official_to_transformers({**sd, **extra})) == set(hf.state_dict())
    with pytest.raises(ValueError, match="visual.transformer.0.attn.nope"):
        clip_visual_official_to_transformers({**sd, "visual.transformer.0.attn.nope": torch.zeros(1)})


# ------------------------------------------------------------------------------------------- preprocessing
def _cubic_weights(t: float, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution weights for taps at offsets -1, 0, 1, 2 around floor(src) (fraction t)."""
    def k(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        if x < 2:
            return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
        return 0.0
    return np.array([k(t + 1), k(t), k(1 - t), k(2 - t)])


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bicubic resampling matrix, half-pixel centres, border taps clamped (no antialias)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        i0 = int(np.floor(src))
        for tap, w in zip(range(i0 - 1, i0 + 3), _cubic_weights(src - i0)):
            m[i, min(max(tap, 0), n_in - 1)] += w
    return m


def test_preprocess_matches_separable_bicubic_reference():
    gen = torch.Generator().manual_seed(4)
    image = torch.rand(2, 3, 37, 53, generator=gen, dtype=torch.float64) * 2 - 1  # one down-, one up-sampled axis
    out = preprocess_clip_image(image, size=45)
    assert out.shape == (2, 3, 45, 45) and out.dtype == torch.float64

    ry, rx = _resize_matrix(37, 45), _resize_matrix(53, 45)
    resized = np.einsum("yh,bchw,xw->bcyx", ry, image.numpy(), rx)
    mean, std = np.array(ClipVisionConfig.mean)[:, None, None], np.array(ClipVisionConfig.std)[:, None, None]
    expected = ((resized * 0.5 + 0.5) - mean) / std
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-10)


def test_preprocess_constant_image_and_types():
    from PIL import Image

    value = 0.25
    out = preprocess_clip_image(torch.full((3, 300, 200), value))  # [3,H,W] accepted, any aspect ratio
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    for c in range(3):
        expected = ((value * 0.5 + 0.5) - ClipVisionConfig.mean[c]) / ClipVisionConfig.std[c]
        assert torch.allclose(out[0, c], torch.tensor(expected), atol=1e-6)

    # A list is resized item by item; PIL images are the data layer's job (no PIL inside models).
    pixels = np.random.default_rng(5).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    as_tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 * 2 - 1
    both = preprocess_clip_image([as_tensor, torch.zeros(3, 10, 10)])
    assert both.shape == (2, 3, 224, 224) and torch.equal(both[:1], preprocess_clip_image(as_tensor))
    with pytest.raises(TypeError, match="image_to_tensor"):
        preprocess_clip_image(Image.fromarray(pixels))
    with pytest.raises(TypeError):
        preprocess_clip_image(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_encode_image_is_preprocess_then_forward(tiny_pair):
    ours, _ = tiny_pair
    images = torch.rand(2, 3, 70, 40, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        out = ours.encode_image(images)
        ref = ours(preprocess_clip_image(images, size=56))
    assert out.shape == (2, 17, 64)
    assert torch.equal(out, ref)
