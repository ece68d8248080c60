"""`UniAnimateTrainingModule`: the LightningModule that trains the UniAnimate LoRA and pose guider (spec 7.3-7.8).

    module = UniAnimateTrainingModule(dit_path=[...7 shards...], text_encoder_path=t5, vae_path=vae,
                                      image_encoder_path=clip, lora_rank=64, lora_alpha=64)
    trainer.fit(module, DataLoader(UniAnimateDataset(...), batch_size=1, shuffle=True))

Parameters and checkpoint names (what `ModelManager.load_lora_v2` reads):
- `pipe.dit.<path>.lora_{A,B}.default.weight`: PEFT LoRA on q/k/v/o (self and cross attention) and ffn.0/ffn.2 of
  every block (not k_img/v_img), fp32; with `train_architecture="full"`, every `pipe.dit.*` weight instead.
- `dwpose_embedding.*`, `randomref_embedding_pose.*`: the pose guider, fp32, trainable.
- T5, VAE and CLIP are frozen and only used under no_grad to encode the batch (`preprocessors.*`, never saved).
  A module built without them (`text_encoder_path=None`, ...) trains from batches encoded once by
  `--task data_process` (cache.py).
The checkpoint files are checkpoint_format.py's (a release file holds exactly the trainable tensors plus
`network_alpha`; resumable ones, resume.py, are Lightning's with the same tensors); the LoRA injection and the
`--pretrained_lora_path` weights are lora_setup.py's; the frozen encoders encoders.py's.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence, Tuple, Union

import lightning.pytorch as pl
import torch
import torch.nn as nn

from ..configs import PoseGuiderConfig
from ..loading.manager import load_wan_dit
from ..models.pose_guider import PoseGuider, pose_guider_config
from ..pipelines.units import dit_step, encode_pose_video, encode_reference_pose
from ..schedulers import FlowMatchScheduler
# The pieces of the trainer, re-exported here where callers have always imported them.
from .checkpoint_format import ALPHA_KEY, check_resumed_checkpoint, prepare_checkpoint, release_state_dict
from .encoders import FrozenEncoders, PathSpec, split_paths
from .errors import NonFiniteError, TrainingError
from .lora_setup import DEFAULT_LORA_TARGETS, add_lora, load_pretrained_weights, resolve_pretrained_files
from .resume_checks import check_resume_settings

logger = logging.getLogger(__name__)

ENCODED_KEYS = ("context", "latents", "clip_feature", "y")     # what the frozen encoders make of a batch


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
            (`google/umt5-xxl`), or given as `tokenizer_path`. With all three encoder paths None the module has no
            encoders and trains from batches that already hold `context`, `latents`, `clip_feature` and `y`
            (a `--task data_process` cache).
        torch_dtype: dtype of the DiT and of the frozen encoders (bf16 as upstream; fp32 for CPU runs). LoRA and
            pose guider parameters are always fp32.
        learning_rate: AdamW learning rate (weight decay 0.01, torch defaults otherwise), no scheduler.
        train_architecture: "lora" (LoRA + pose guider) or "full" (whole DiT + pose guider).
        lora_rank, lora_alpha, lora_target_modules, init_lora_weights ("kaiming": PEFT default, B = 0;
            "gaussian"): the PEFT LoRA, scale alpha / rank.
        pretrained_lora_path: start from a UniAnimate checkpoint (file, shards, or a folder with one checkpoint or
            the shards of one export); weights only, checked strictly (see `load_pretrained`).
        use_gradient_checkpointing(_offload): recompute (and keep on CPU) the DiT block activations.
        num_persistent_param_in_dit: stream the frozen DiT weights past this many resident parameters from CPU
            memory during training (layer streaming, `diffsynth.acceleration.vram`; None: all resident, 0: all
            stream). LoRA and pose-guider parameters stay resident. Enabled in `setup()`, before the trainer moves
            the module, so the DiT never lands on the GPU whole. Pair it with gradient checkpointing.
        tiled, tile_size, tile_stride: VAE encode of the training video (latent units).
        pose_dropout: probability of zeroing both pose embeddings (upstream 0.05).
        reference_dropout: probability of zeroing the CLIP tokens and the whole y (upstream 0.1).
        bf16_timestep: round the sampled timestep to bf16 before use, as upstream (995.9 -> 996). The DiT step
            (`pipelines.units.dit_step`, shared with the pipelines) casts the timestep to the DiT's dtype: with
            False, bf16/fp16 weights still embed a rounded timestep (the noise and loss weight use the exact one).
        configs: model configs for checkpoints whose shapes do not determine them (tiny test models).
    """

    def __init__(self, dit_path: PathSpec, text_encoder_path: Optional[PathSpec] = None,
                 vae_path: Optional[PathSpec] = None, image_encoder_path: Optional[PathSpec] = None, *,
                 tokenizer_path: Optional[str] = None,
                 torch_dtype: torch.dtype = torch.bfloat16, learning_rate: float = 1e-5,
                 train_architecture: str = "lora", lora_rank: int = 4, lora_alpha: float = 4.0,
                 lora_target_modules: Union[str, Sequence[str]] = DEFAULT_LORA_TARGETS,
                 init_lora_weights: str = "kaiming", pretrained_lora_path: Optional[PathSpec] = None,
                 use_gradient_checkpointing: bool = False, use_gradient_checkpointing_offload: bool = False,
                 num_persistent_param_in_dit: Optional[float] = None, tiled: bool = True, tile_size: Tuple[int, int] = (34, 34), tile_stride: Tuple[int, int] = (18, 16),
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
        encoder_paths = (text_encoder_path, vae_path, image_encoder_path)
        if any(p is None for p in encoder_paths) and any(p is not None for p in encoder_paths):
            raise ValueError("give all three encoder paths (text_encoder_path, vae_path, image_encoder_path), or none "
                             "of them to train from a data_process cache")
        self.learning_rate = learning_rate
        self.train_architecture = train_architecture
        self.use_gradient_checkpointing = use_gradient_checkpointing
        self.use_gradient_checkpointing_offload = use_gradient_checkpointing_offload
        if num_persistent_param_in_dit is not None and num_persistent_param_in_dit < 0:
            raise ValueError(f"num_persistent_param_in_dit must be >= 0 (or None); got {num_persistent_param_in_dit}")
        self.num_persistent_param_in_dit = num_persistent_param_in_dit
        self.pose_dropout, self.reference_dropout = pose_dropout, reference_dropout
        self.bf16_timestep = bf16_timestep
        self.lora_rank, self.lora_alpha = lora_rank, lora_alpha
        if isinstance(lora_target_modules, str):
            lora_target_modules = [t.strip() for t in lora_target_modules.split(",") if t.strip()]
        self.lora_target_modules = list(lora_target_modules)
        # Resumable checkpoints hold only the trainable tensors: restore them without the frozen ones.
        self.strict_loading = False
        self.saving_resumable = False            # set by resume.ResumeCheckpoint around its save
        self.weights_ahead_of_snapshot = False   # an optimizer update started after the last resumable point

        # 1. Frozen encoders, used only to turn a batch into DiT inputs (absent when training from a cache).
        self.preprocessors: Optional[FrozenEncoders] = None
        if text_encoder_path is not None:
            self.preprocessors = FrozenEncoders.load(
                text_encoder_path, vae_path, image_encoder_path, tokenizer_path=tokenizer_path,
                torch_dtype=torch_dtype, configs=configs, progress=progress, tiled=tiled, tile_size=tile_size,
                tile_stride=tile_stride)

        # 2. The DiT, with LoRA (or fully trainable), in train mode (dropout-free; it enables checkpointing).
        dit = load_wan_dit(split_paths(dit_path), torch_dtype=torch_dtype, device="cpu", config=configs,
                           progress=progress)
        self.pipe = TrainingPipe(dit)
        self.scheduler = FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)
        self.scheduler.set_timesteps(1000, training=True)
        if train_architecture == "lora":
            add_lora(dit, lora_rank, lora_alpha, self.lora_target_modules, init_lora_weights)
        else:
            dit.requires_grad_(True)
        dit.train()

        # 3. The pose guider, fp32 and trainable (the released width; a --pretrained_lora_path may bring another).
        self._set_pose_guider(PoseGuider(PoseGuiderConfig(out_dim=dit.config.dim)))

        if pretrained_lora_path is not None:
            self.load_pretrained(pretrained_lora_path)

    def _set_pose_guider(self, guider: PoseGuider) -> None:
        """Register `guider` at the top level (`dwpose_embedding.*`, as released), fp32 and in train mode."""
        guider = guider.float().train()
        self.dwpose_embedding = guider.dwpose_embedding
        self.randomref_embedding_pose = guider.randomref_embedding_pose
        object.__setattr__(self, "pose_guider", guider)    # same sub-modules; not registered a second time

    def fit_pose_guider(self, pose: Dict[str, torch.Tensor], source: str) -> None:
        """Rebuild the pose guider at the width of the guider tensors `pose` (e.g. the demo model's 8 channels);
        a guider for another DiT width is an error. Nothing happens without pose tensors or when the width fits."""
        if not pose:
            return
        config = pose_guider_config(pose, self.dit.config.dim)
        if config.out_dim != self.dit.config.dim:
            raise TrainingError(f"{source}: its pose guider outputs {config.out_dim} channels but the DiT width "
                                f"is {self.dit.config.dim}; it belongs to another model size")
        if config != self.pose_guider.config:
            self._set_pose_guider(PoseGuider(config))

    def setup(self, stage: str) -> None:
        """Lightning hook, called before the strategy moves the module to its device: start DiT layer streaming
        towards that device when `num_persistent_param_in_dit` is set."""
        if self.num_persistent_param_in_dit is not None and getattr(self.dit, "_vram_streamer", None) is None:
            from ..acceleration.vram import enable_layer_streaming  # noqa: PLC0415

            enable_layer_streaming(self.dit, self.num_persistent_param_in_dit,
                                   compute_device=self.trainer.strategy.root_device, storage_device="cpu",
                                   onload=False)

    # ----------------------------------------------------------------------------------------------- params
    @property
    def dit(self) -> nn.Module:
        return self.pipe.dit

    @property
    def has_encoders(self) -> bool:
        return self.preprocessors is not None

    def trainable_parameter_groups(self):
        """(name, parameters) for the DiT, dwpose_embedding and randomref_embedding_pose (upstream's 3 groups)."""
        dit_params = [p for p in self.pipe.parameters() if p.requires_grad]
        return [("dit", dit_params), ("dwpose_embedding", list(self.dwpose_embedding.parameters())),
                ("randomref_embedding_pose", list(self.randomref_embedding_pose.parameters()))]

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """Every trainable tensor under its full name, on the CPU."""
        return {name: p.detach().cpu().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def release_state_dict(self) -> Dict[str, torch.Tensor]:
        """The release checkpoint (checkpoint_format.py)."""
        return release_state_dict(self)

    def training_settings(self) -> dict:
        """What a resumable checkpoint must agree with to be continued by this module."""
        return {"train_architecture": self.train_architecture, "lora_rank": int(self.lora_rank),
                "lora_alpha": float(self.lora_alpha), "lora_target_modules": list(self.lora_target_modules)}

    def configure_optimizers(self):
        groups = [{"params": params, "name": name} for name, params in self.trainable_parameter_groups() if params]
        return torch.optim.AdamW(groups, lr=self.learning_rate)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        """The default step, marking the moment the weights start to change (after the forward and backward), so
        an interrupt during the update is not saved as a resumable point. Non-finite gradients stop the run before
        the update (the weights stay finite); not with a GradScaler (fp16), which skips such steps itself."""
        def closure():
            result = optimizer_closure()
            if not self._grad_scaler():
                self.check_finite_gradients()
            self.weights_ahead_of_snapshot = True
            return result
        optimizer.step(closure=closure)

    def _grad_scaler(self):
        try:
            return getattr(self.trainer.precision_plugin, "scaler", None)
        except RuntimeError:                       # not attached to a Trainer
            return None

    def check_finite_gradients(self) -> None:
        grads = [(name, p.grad) for name, p in self.named_parameters() if p.requires_grad and p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for _, g in grads]).all()):
            return
        bad = [name for name, g in grads if not bool(torch.isfinite(g).all())]
        raise NonFiniteError(f"step {self.global_step + 1}: {len(bad)} gradients hold NaN/Inf (e.g. {bad[:3]}) "
                             "although the loss is finite; the weights were not updated and no checkpoint is "
                             "written. Lower --learning_rate (or use fp32 / bf16), then continue with --resume")

    def on_train_start(self) -> None:
        """A resumed run uses the --learning_rate given now (the optimizer state restored from the checkpoint
        carries the old one)."""
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                if group["lr"] != self.learning_rate:
                    logger.warning("learning rate of %s: %g (given now) replaces %g (the checkpoint's)",
                                   group.get("name", "a parameter group"), self.learning_rate, group["lr"])
                    group["lr"] = self.learning_rate

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        prepare_checkpoint(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_resumed_checkpoint(self, checkpoint)

    def load_pretrained(self, path: PathSpec) -> None:
        """Start from a UniAnimate checkpoint (`lora_setup.load_pretrained_weights`)."""
        load_pretrained_weights(self, path)

    # ---------------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def encode_batch(self, batch: dict) -> dict:
        """The DiT inputs of a batch: read from it when it comes from a data_process cache, else encoded by the
        frozen encoders (spec 7.4 step 3)."""
        if all(k in batch for k in ENCODED_KEYS):
            device = batch["dwpose_data"].device
            return {k: batch[k].to(device) for k in ENCODED_KEYS}
        if self.preprocessors is None:
            raise TrainingError("this module has no encoders (built for cached training) but the batch is not "
                                f"encoded: it lacks {[k for k in ENCODED_KEYS if k not in batch]}")
        return self.preprocessors.encode(batch)

    def compute_loss(self, batch: dict, noise: Optional[torch.Tensor] = None, timestep_id: Optional[int] = None
                     ) -> torch.Tensor:
        """The weighted flow-matching loss of spec 7.4. `noise` and `timestep_id` are drawn when not given."""
        # 1-2. Pose embeddings (trainable): target poses -> tokens, reference pose -> added to y.
        #    The pipelines' own pose encoding (pipelines/units.py), here with gradients.
        device = batch["dwpose_data"].device
        pose_tokens = encode_pose_video(self.pose_guider, batch["dwpose_data"], device)
        ref_pose_emb = encode_reference_pose(self.pose_guider, batch["random_ref_dwpose"], device)
        # 3. Frozen encoders (or their cached outputs).
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
        # 6. DiT prediction with the pose tokens added after patch embedding: the pipelines' step, which casts the
        #    inputs (the timestep too) to the DiT's dtype, as upstream's training passes its bf16 timestep.
        pred = dit_step(self.dit, noisy, timestep[None], encoded["context"], clip_feature, y, pose_tokens,
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
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:        # all processes stop together (a lone one would leave the rest hanging)
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            # Stopping (rather than skipping the step) keeps a diverged run from going on silently; nothing is
            # saved, and the last resumable checkpoint (finite, see resume.py) is named in the log.
            sample = batch.get("path") if isinstance(batch, dict) else None
            sample = sample[0] if isinstance(sample, (list, tuple)) and sample else sample
            raise NonFiniteError(f"step {self.global_step + 1}: the loss is {float(loss.detach())} (sample "
                                 f"{sample}); the run stops, with no checkpoint of this step. Lower --learning_rate "
                                 "or check that sample, then continue with --resume")
        self.log("train_loss", loss, prog_bar=True, batch_size=1)
        return loss


__all__ = ["UniAnimateTrainingModule", "TrainingPipe", "FrozenEncoders", "TrainingError", "add_lora", "split_paths",
           "resolve_pretrained_files", "check_resume_settings", "DEFAULT_LORA_TARGETS", "ALPHA_KEY", "ENCODED_KEYS"]
