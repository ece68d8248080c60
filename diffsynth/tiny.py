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


@dataclass
class TinyCheckpoints:
    """Paths of tiny checkpoints written in the released layouts (see `save_tiny_checkpoints`)."""

    dit_shards: list      # official-name safetensors shards, with a Wan config.json beside them
    text_encoder: str     # .pth, with the tokenizer in google/umt5-xxl beside it
    vae: str              # .pth
    image_encoder: str    # .pth holding `visual.*` (and a textual tower that loaders must ignore)
    unianimate: str       # .ckpt: trainer-format LoRA (`pipe.dit.` prefix) + pose-guider tensors


def save_tiny_checkpoints(models: TinyModels, folder: str, lora_rank: int = 2, seed: int = 0) -> TinyCheckpoints:
    """Write the tiny models as files in the released layouts, so the real loaders can read them back.

    The DiT goes into two safetensors shards; the UniAnimate file gets a seeded random LoRA on every q/k/v/o and
    ffn Linear (named like the trainer writes it) plus the pose guider's tensors.
    """
    import json  # noqa: PLC0415

    from safetensors.torch import save_file  # noqa: PLC0415

    from .loading.sidecar import write_config_sidecar  # noqa: PLC0415

    os.makedirs(folder, exist_ok=True)
    dit_sd = {k: v.contiguous() for k, v in models.dit.state_dict().items()}
    keys = sorted(dit_sd)
    shards = []
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        path = os.path.join(folder, f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors")
        save_file({k: dit_sd[k] for k in part}, path)
        shards.append(path)
    cfg = models.dit.config
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"_class_name": "WanModel", "model_type": cfg.model_type, "dim": cfg.dim, "num_heads": cfg.num_heads,
                   "num_layers": cfg.num_layers, "ffn_dim": cfg.ffn_dim, "in_dim": cfg.in_dim}, f)
    t5_path = os.path.join(folder, "models_t5_umt5-xxl-enc-bf16.pth")
    torch.save(models.text_encoder.state_dict(), t5_path)
    models.prompter.tokenizer.save_pretrained(os.path.join(folder, "google", "umt5-xxl"))
    vae_path = os.path.join(folder, "Wan2.1_VAE.pth")
    torch.save(models.vae.state_dict(), vae_path)
    clip_path = os.path.join(folder, "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    clip_sd = dict(models.image_encoder.state_dict())
    clip_sd["textual.token_embedding.weight"] = torch.zeros(8, 4)
    clip_sd["log_scale"] = torch.tensor(4.6)
    torch.save(clip_sd, clip_path)
    write_config_sidecar(clip_path, models.image_encoder.config)   # a tiny CLIP's heads are not width / 80

    gen = torch.Generator().manual_seed(seed)
    unianimate = {}
    for name, module in models.dit.named_modules():
        if name.startswith("blocks.") and name.rsplit(".", 1)[-1] in ("q", "k", "v", "o", "0", "2") \
                and isinstance(module, torch.nn.Linear):
            out_f, in_f = module.weight.shape
            unianimate[f"pipe.dit.{name}.lora_A.default.weight"] = torch.randn(lora_rank, in_f, generator=gen) * 0.1
            unianimate[f"pipe.dit.{name}.lora_B.default.weight"] = torch.randn(out_f, lora_rank, generator=gen) * 0.1
    unianimate.update({k: v.clone() for k, v in models.pose_guider.state_dict().items()})
    unianimate_path = os.path.join(folder, "UniAnimate-Wan2.1-14B-Lora-12000.ckpt")
    torch.save(unianimate, unianimate_path)
    return TinyCheckpoints(shards, t5_path, vae_path, clip_path, unianimate_path)


__all__ = ["TinyModels", "TinyCheckpoints", "build_tiny_models", "build_tiny_tokenizer", "save_tiny_checkpoints",
           "TINY_DIT", "TINY_VAE", "TINY_T5", "TINY_CLIP", "TINY_POSE"]
