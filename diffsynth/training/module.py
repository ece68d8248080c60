"""`UniAnimateTrainingModule`: the LightningModule that trains the UniAnimate LoRA and pose guider (spec 7.3-7.8).

    module = UniAnimateTrainingModule(dit_path=[...7 shards...], text_encoder_path=t5, vae_path=vae,
                                      image_encoder_path=clip, lora_rank=64, lora_alpha=64)
    trainer.fit(module, DataLoader(UniAnimateDataset(...), batch_size=1, shuffle=True))

Parameters and checkpoint names (what `ModelManager.load_lora_v2` reads):
- `pipe.dit.<path>.lora_{A,B}.default.weight`: PEFT LoRA on q/k/v/o (self and cross attention) and ffn.0/ffn.2 of
  every block (not k_img/v_img), fp32; with `train_architecture="full"`, every `pipe.dit.*` weight instead.
- `dwpose_embedding.*`, `randomref_embedding_pose.*`: the pose guider, fp32, trainable.
- T5, VAE and CLIP are frozen and only used under no_grad to encode the batch (`preprocessors.*`, never saved).
A checkpoint holds exactly the trainable tensors, as a flat `{name: tensor}` dict (no optimizer state).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Sequence, Tuple, Union

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..configs import PoseGuiderConfig
from ..loading.files import Checkpoint, describe
from ..loading.lora import is_pose_key, pose_guider_state_dict, strip_lora_prefix
from ..loading.manager import load_wan_dit, load_wan_image_encoder, load_wan_text_encoder, load_wan_vae
from ..models.pose_guider import PoseGuider
from ..pipelines.units import encode_prompt, encode_reference_image, pil_to_tensor
from ..prompters import WanPrompter, resolve_tokenizer_path
from ..schedulers import FlowMatchScheduler

logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")
PathSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


class TrainingError(RuntimeError):
    """A training setup that cannot work (e.g. a pretrained LoRA of another rank)."""


def split_paths(spec: Optional[PathSpec]):
    """`"a,b,c"` (the CLI's comma-separated shards) -> ["a", "b", "c"]; anything else unchanged."""
    if isinstance(spec, str) and "," in spec:
        return [p.strip() for p in spec.split(",") if p.strip()]
    return spec


class TrainingPipe(nn.Module):
    """Holds the DiT under the name `pipe.dit`, so parameter names match upstream's checkpoints."""

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit


class UniAnimateTrainingModule(pl.LightningModule):
    """Trains a LoRA on the Wan2.1-I2V DiT plus the UniAnimate pose guider.

    Args:
        dit_path, text_encoder_path, vae_path, image_encoder_path: checkpoints (a file, shards as a list or a
            comma-separated string, or a folder). The umT5 tokenizer is looked up beside the text encoder
            (`google/umt5-xxl`), or given as `tokenizer_path`.
        torch_dtype: dtype of the DiT and of the frozen encoders (bf16 as upstream; fp32 for CPU runs). LoRA and
            pose guider parameters are always fp32.
        learning_rate: AdamW learning rate (weight decay 0.01, torch defaults otherwise), no scheduler.
        train_architecture: "lora" (LoRA + pose guider) or "full" (whole DiT + pose guider).
        lora_rank, lora_alpha, lora_target_modules, init_lora_weights ("kaiming": PEFT default, B = 0;
            "gaussian"): the PEFT LoRA, scale alpha / rank.
        pretrained_lora_path: start from a UniAnimate checkpoint (file or folder of files); weights only.
        use_gradient_checkpointing(_offload): recompute (and keep on CPU) the DiT block activations.
        tiled, tile_size, tile_stride: VAE encode of the training video (latent units).
        pose_dropout: probability of zeroing both pose embeddings (upstream 0.05).
        reference_dropout: probability of zeroing the CLIP tokens and the whole y (upstream 0.1).
        bf16_timestep: round the sampled timestep to bf16 before use, as upstream (995.9 -> 996).
        configs: model configs for checkpoints whose shapes do not determine them (tiny test models).
    """

    def __init__(self, dit_path: PathSpec, text_encoder_path: PathSpec, vae_path: PathSpec,
                 image_encoder_path: PathSpec, *, tokenizer_path: Optional[str] = None,
                 torch_dtype: torch.dtype = torch.bfloat16, learning_rate: float = 1e-5,
                 train_architecture: str = "lora", lora_rank: int = 4, lora_alpha: float = 4.0,
                 lora_target_modules: Union[str, Sequence[str]] = DEFAULT_LORA_TARGETS,
                 init_lora_weights: str = "kaiming", pretrained_lora_path: Optional[PathSpec] = None,
                 use_gradient_checkpointing: bool = False, use_gradient_checkpointing_offload: bool = False,
                 tiled: bool = True, tile_size: Tuple[int, int] = (34, 34), tile_stride: Tuple[int, int] = (18, 16),
                 pose_dropout: float = 0.05, reference_dropout: float = 0.1, bf16_timestep: bool = True,
                 configs=None, progress: bool = False):
        super().__init__()
        if train_architecture not in ("lora", "full"):
            raise ValueError(f"train_architecture must be 'lora' or 'full'; got {train_architecture!r}")
        if init_lora_weights not in ("kaiming", "gaussian"):
            raise ValueError(f"init_lora_weights must be 'kaiming' or 'gaussian'; got {init_lora_weights!r}")
        for name, p in (("pose_dropout", pose_dropout), ("reference_dropout", reference_dropout)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]; got {p}")
        self.learning_rate = learning_rate
        self.train_architecture = train_architecture
        self.use_gradient_checkpointing = use_gradient_checkpointing
        self.use_gradient_checkpointing_offload = use_gradient_checkpointing_offload
        self.tiler = dict(tiled=tiled, tile_size=tuple(tile_size), tile_stride=tuple(tile_stride))
        self.pose_dropout, self.reference_dropout = pose_dropout, reference_dropout
        self.bf16_timestep = bf16_timestep

        # 1. Frozen encoders, used only to turn a batch into DiT inputs.
        load = dict(torch_dtype=torch_dtype, device="cpu", config=configs, progress=progress)
        self.preprocessors = nn.ModuleDict({
            "text_encoder": load_wan_text_encoder(split_paths(text_encoder_path), **load),
            "vae": load_wan_vae(split_paths(vae_path), **load),
            "image_encoder": load_wan_image_encoder(split_paths(image_encoder_path), **load),
        }).eval().requires_grad_(False)
        tokenizer_source = tokenizer_path or _first(split_paths(text_encoder_path))
        self.prompter = WanPrompter(resolve_tokenizer_path(tokenizer_source))

        # 2. The DiT, with LoRA (or fully trainable), in train mode (dropout-free; it enables checkpointing).
        dit = load_wan_dit(split_paths(dit_path), **load)
        self.pipe = TrainingPipe(dit)
        self.scheduler = FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)
        self.scheduler.set_timesteps(1000, training=True)
        if train_architecture == "lora":
            self.lora_rank, self.lora_alpha = lora_rank, lora_alpha
            add_lora(dit, lora_rank, lora_alpha, lora_target_modules, init_lora_weights)
        else:
            dit.requires_grad_(True)
        dit.train()

        # 3. The pose guider, fp32 and trainable, registered at the top level (`dwpose_embedding.*`, as released).
        guider = PoseGuider(PoseGuiderConfig(out_dim=dit.config.dim)).float().train()
        self.dwpose_embedding = guider.dwpose_embedding
        self.randomref_embedding_pose = guider.randomref_embedding_pose
        object.__setattr__(self, "pose_guider", guider)    # same sub-modules; not registered a second time

        if pretrained_lora_path is not None:
            self.load_pretrained(pretrained_lora_path)

    # ----------------------------------------------------------------------------------------------- params
    @property
    def dit(self) -> nn.Module:
        return self.pipe.dit

    def trainable_parameter_groups(self):
        """(name, parameters) for the DiT, dwpose_embedding and randomref_embedding_pose (upstream's 3 groups)."""
        dit_params = [p for p in self.pipe.parameters() if p.requires_grad]
        return [("dit", dit_params), ("dwpose_embedding", list(self.dwpose_embedding.parameters())),
                ("randomref_embedding_pose", list(self.randomref_embedding_pose.parameters()))]

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """The checkpoint content: every trainable tensor under its full name, on the CPU."""
        return {name: p.detach().cpu().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def configure_optimizers(self):
        groups = [{"params": params, "name": name} for name, params in self.trainable_parameter_groups() if params]
        return torch.optim.AdamW(groups, lr=self.learning_rate)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Replace Lightning's checkpoint by the flat trainable tensors (readable by `load_lora_v2`)."""
        checkpoint.clear()
        checkpoint.update(self.trainable_state_dict())

    # -------------------------------------------------------------------------------------------- pretrained
    def load_pretrained(self, path: PathSpec) -> None:
        """Load a UniAnimate checkpoint (file, list or folder) into the LoRA/DiT and the pose guider."""
        source = describe(path)
        # Read only what can be used: a DeepSpeed export also holds the frozen DiT, T5 and VAE (tens of GB in fp32).
        full = self.train_architecture == "full"
        with Checkpoint(split_paths(path)) as ckpt:
            wanted = [k for k in ckpt.infos if full or is_pose_key(k) or ".lora_" in k]
            state = dict(ckpt.iter_tensors(wanted, dtype=torch.float32))
        pose = pose_guider_state_dict({k: v for k, v in state.items() if is_pose_key(k)})
        dit_state = {strip_lora_prefix(k): v for k, v in state.items() if not is_pose_key(k)}
        if not self.train_architecture == "full":
            dit_state = {k: v for k, v in dit_state.items() if ".lora_" in k}
        own = self.dit.state_dict()
        unknown = sorted(k for k in dit_state if k not in own)
        if unknown:
            raise TrainingError(f"{source}: {len(unknown)} tensors fit no DiT parameter (e.g. {unknown[:3]}); "
                                "was it trained with other --lora_target_modules or another model?")
        bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in dit_state.items() if v.shape != own[k].shape]
        if bad:
            key, got, want = bad[0]
            if ".lora_A." in key or ".lora_B." in key:
                rank = got[0] if ".lora_A." in key else got[1]
                raise TrainingError(f"{source} holds a rank-{rank} LoRA but --lora_rank is {self.lora_rank}: "
                                    f"pass --lora_rank {rank} (and its --lora_alpha) to continue from it")
            raise TrainingError(f"{source}: {key} has shape {got}, the DiT expects {want}")
        if not dit_state:
            logger.warning("%s holds no LoRA tensors for the DiT; only the pose guider is loaded", source)
        self.dit.load_state_dict(dit_state, strict=False)
        if pose:
            self.pose_guider.load_state_dict(pose, strict=True)
        else:
            logger.warning("%s holds no pose-guider tensors; the pose guider starts from scratch", source)
        logger.info("loaded %d DiT tensors and %d pose-guider tensors from %s", len(dit_state), len(pose), source)

    # ---------------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def encode_batch(self, batch: dict) -> dict:
        """Frozen preprocessing (spec 7.4 step 3): T5 context, VAE latents of the video, CLIP tokens and y."""
        video, first_frame, text = batch["video"], batch["first_frame"], batch["text"]
        if video.shape[0] != 1:
            raise ValueError(f"training uses batch_size 1 (as upstream); got a batch of {video.shape[0]}")
        text = text[0] if isinstance(text, (list, tuple)) else text
        device = video.device
        pre = self.preprocessors
        _, _, num_frames, height, width = video.shape
        context = encode_prompt(self.prompter, pre["text_encoder"], text, device)
        vae_dtype = next(pre["vae"].parameters()).dtype
        latents = pre["vae"].encode(video.to(vae_dtype), progress=False, **self.tiler)
        image = pil_to_tensor(Image.fromarray(first_frame[0].cpu().numpy().astype(np.uint8)), height, width)
        clip_feature, y = encode_reference_image(pre["image_encoder"], pre["vae"], image, num_frames, device)
        return {"context": context, "latents": latents, "clip_feature": clip_feature, "y": y}

    def compute_loss(self, batch: dict, noise: Optional[torch.Tensor] = None, timestep_id: Optional[int] = None
                     ) -> torch.Tensor:
        """The weighted flow-matching loss of spec 7.4. `noise` and `timestep_id` are drawn when not given."""
        # 1-2. Pose embeddings (trainable): target poses -> tokens, reference pose -> added to y.
        pose_tokens = self.pose_guider.embed_pose_video(batch["dwpose_data"].float() / 255)
        ref_pose = batch["random_ref_dwpose"].permute(0, 3, 1, 2).float() / 255
        ref_pose_emb = self.pose_guider.embed_reference_pose(ref_pose)
        # 3. Frozen encoders.
        encoded = self.encode_batch(batch)
        latents, clip_feature, y = encoded["latents"], encoded["clip_feature"], encoded["y"]
        # 4. Condition dropout. Multiplying by 0 keeps the pose guider in the graph (zero gradients), so DDP
        #    sees every parameter used; the values are those of upstream's zeroing.
        if float(torch.rand(())) < self.pose_dropout:
            pose_tokens, ref_pose_emb = pose_tokens * 0, ref_pose_emb * 0
        if float(torch.rand(())) < self.reference_dropout:
            clip_feature, y = torch.zeros_like(clip_feature), torch.zeros_like(y)
        y = y + ref_pose_emb
        # 5. Noise at a random timestep of the 1000-step training schedule.
        if noise is None:
            noise = torch.randn_like(latents)
        if timestep_id is None:
            timestep_id = int(torch.randint(0, self.scheduler.num_train_timesteps, ()))
        timestep = self.sample_timestep(timestep_id).to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, timestep)
        target = self.scheduler.training_target(latents, noise)
        # 6. DiT prediction with the pose tokens added after patch embedding.
        dtype = next(self.dit.parameters()).dtype
        pred = self.dit(noisy.to(dtype), timestep[None], encoded["context"].to(dtype), clip_feature.to(dtype),
                        y.to(dtype), add_condition=pose_tokens,
                        use_gradient_checkpointing=self.use_gradient_checkpointing,
                        use_gradient_checkpointing_offload=self.use_gradient_checkpointing_offload)
        # 7. Weighted MSE.
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        return loss * self.scheduler.training_weight(timestep).to(loss.device)

    def sample_timestep(self, timestep_id: int) -> torch.Tensor:
        """`scheduler.timesteps[id]`, rounded to bf16 and back (explicitly, as upstream's cast does)."""
        timestep = self.scheduler.timesteps[timestep_id]
        return timestep.to(torch.bfloat16).float() if self.bf16_timestep else timestep.float()

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=1)
        return loss


def add_lora(dit: nn.Module, rank: int, alpha: float, target_modules: Union[str, Sequence[str]] = DEFAULT_LORA_TARGETS,
             init_lora_weights: str = "kaiming") -> nn.Module:
    """Inject a PEFT LoRA (adapter "default") into `dit` in place and upcast its parameters to fp32.

    Targets match by name suffix: "q" hits `self_attn.q` and `cross_attn.q` but not `cross_attn.k_img`.
    """
    from peft import LoraConfig, inject_adapter_in_model  # noqa: PLC0415

    if isinstance(target_modules, str):
        target_modules = [t.strip() for t in target_modules.split(",") if t.strip()]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                        init_lora_weights=True if init_lora_weights == "kaiming" else "gaussian")
    inject_adapter_in_model(config, dit)
    adapted = 0
    for name, param in dit.named_parameters():
        if ".lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
            adapted += 1
        else:
            param.requires_grad_(False)
    if not adapted:
        raise TrainingError(f"no DiT layer matches --lora_target_modules {list(target_modules)}")
    return dit


def _first(spec):
    return spec[0] if isinstance(spec, (list, tuple)) else spec


__all__ = ["UniAnimateTrainingModule", "TrainingPipe", "TrainingError", "add_lora", "split_paths",
           "DEFAULT_LORA_TARGETS"]
