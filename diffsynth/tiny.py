"""Tiny random-weight versions of every model, for the CPU demo and for smoke tests.

They are the real classes with small configurations; nothing here is a mock. Weights are seeded, so a run is
reproducible, but untrained: generated videos show the mechanics, not a likeness.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from .configs import ClipVisionConfig, PoseGuiderConfig, UMT5Config, WanDiTConfig, WanVAEConfig
from .models.pose_guider import PoseGuider
from .models.wan_dit import WanModel
from .models.wan_image_encoder import WanImageEncoder
from .models.wan_text_encoder import WanTextEncoder
from .models.wan_vae import WanVideoVAE
from .prompters import WanPrompter

TINY_DIT = WanDiTConfig(model_type="i2v", in_dim=36, dim=64, ffn_dim=128, num_heads=4, num_layers=2,
                        text_dim=32, image_dim=32)
TINY_VAE = WanVAEConfig(dim=8, z_dim=16)
TINY_T5 = UMT5Config(vocab_size=128, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)
TINY_CLIP = ClipVisionConfig(image_size=28, patch_size=14, dim=32, mlp_dim=64, num_heads=4, num_layers=2,
                             out_dim=16, use_layers=1)
TINY_POSE = PoseGuiderConfig(out_dim=TINY_DIT.dim)

_SENTENCES = [
    "a person is dancing", "a woman raises both arms and turns around", "a man walks forward slowly",
    "a girl waves her hand and smiles", "the dancer jumps, spins and lands softly", "two hands clap above the head",
    "a boy kicks a ball in the park", "someone sways from side to side to the music",
]


@dataclass
class TinyModels:
    dit: WanModel
    vae: WanVideoVAE
    text_encoder: WanTextEncoder
    image_encoder: WanImageEncoder
    pose_guider: PoseGuider
    prompter: WanPrompter


def build_tiny_tokenizer(folder: str) -> str:
    """Train a tiny SentencePiece tokenizer with the umT5 special ids (pad 0, </s> 1, unk 2) and save it as a
    transformers tokenizer folder in `folder/google/umt5-xxl`, the layout of the Wan2.1 release. Returns `folder`."""
    import sentencepiece as spm  # noqa: PLC0415
    from transformers import T5Tokenizer  # noqa: PLC0415

    spm_dir = os.path.join(folder, "spm")
    os.makedirs(spm_dir, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SENTENCES * 8), model_prefix=os.path.join(spm_dir, "spiece"),
        vocab_size=TINY_T5.vocab_size, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    T5Tokenizer.from_pretrained(spm_dir, extra_ids=0).save_pretrained(os.path.join(folder, "google", "umt5-xxl"))
    return folder


def build_tiny_models(tokenizer_folder: str, seed: int = 0, dtype: Optional[torch.dtype] = torch.float32) -> TinyModels:
    """All five networks at tiny sizes with seeded default initialisation, plus a prompter on a tiny tokenizer."""
    torch.manual_seed(seed)
    models = TinyModels(
        dit=WanModel(TINY_DIT), vae=WanVideoVAE(TINY_VAE), text_encoder=WanTextEncoder(TINY_T5),
        image_encoder=WanImageEncoder(TINY_CLIP), pose_guider=PoseGuider(TINY_POSE),
        prompter=WanPrompter(build_tiny_tokenizer(tokenizer_folder)))
    for name in ("dit", "vae", "text_encoder", "image_encoder", "pose_guider"):
        getattr(models, name).to(dtype).eval().requires_grad_(False)
    return models


__all__ = ["TinyModels", "build_tiny_models", "build_tiny_tokenizer",
           "TINY_DIT", "TINY_VAE", "TINY_T5", "TINY_CLIP", "TINY_POSE"]
