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
A release checkpoint holds exactly the trainable tensors, as a flat `{name: tensor}` dict (no optimizer state), plus
`network_alpha` (a 0-dim fp32 tensor, the training `lora_alpha`) for LoRA training. Resumable checkpoints
(resume.py) are full Lightning checkpoints whose `state_dict` holds the same trainable tensors.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn as nn

from ..configs import PoseGuiderConfig
from ..loading.files import WEIGHT_SUFFIXES, Checkpoint, describe
from ..loading.lora import is_pose_key, pose_guider_state_dict, strip_lora_prefix
from ..loading.manager import load_wan_dit, load_wan_image_encoder, load_wan_text_encoder, load_wan_vae
from ..models.pose_guider import PoseGuider, pose_guider_config
from ..data.images import image_to_tensor
from ..pipelines.units import encode_pose_video, encode_prompt, encode_reference_image, encode_reference_pose
from ..prompters import WanPrompter, resolve_tokenizer_path
from ..schedulers import FlowMatchScheduler
from .resume import NonFiniteError, find_nonfinite

logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")
ALPHA_KEY = "network_alpha"       # the training lora_alpha in release checkpoints (0-dim fp32; no 'lora' in the name)
ENCODED_KEYS = ("context", "latents", "clip_feature", "y")     # what the frozen encoders make of a batch
# DeepSpeed's zero_to_fp32 (--safe_serialization) and transformers-style shard names: model-00001-of-00003.safetensors
SHARD_NAME = re.compile(r"(?P<stem>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.(?P<ext>safetensors|bin)")
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


class FrozenEncoders(nn.Module):
    """umT5, VAE and CLIP, frozen: turn a training batch into DiT inputs (spec 7.4 step 3).

    Used inside the training step, or once per sample by `--task data_process` (cache.py).
    """

    def __init__(self, text_encoder: nn.Module, vae: nn.Module, image_encoder: nn.Module, prompter: WanPrompter,
                 tiled: bool = True, tile_size: Tuple[int, int] = (34, 34), tile_stride: Tuple[int, int] = (18, 16)):
        super().__init__()
        self.text_encoder, self.vae, self.image_encoder = text_encoder, vae, image_encoder
        self.prompter = prompter
        self.tiler = dict(tiled=tiled, tile_size=tuple(tile_size), tile_stride=tuple(tile_stride))
        self.eval().requires_grad_(False)

    @classmethod
    def load(cls, text_encoder_path: PathSpec, vae_path: PathSpec, image_encoder_path: PathSpec, *,
             tokenizer_path: Optional[str] = None, torch_dtype: torch.dtype = torch.bfloat16, configs=None,
             progress: bool = False, **tiler) -> "FrozenEncoders":
        load = dict(torch_dtype=torch_dtype, device="cpu", config=configs, progress=progress)
        prompter = WanPrompter(resolve_tokenizer_path(tokenizer_path or _first(split_paths(text_encoder_path))))
        return cls(load_wan_text_encoder(split_paths(text_encoder_path), **load),
                   load_wan_vae(split_paths(vae_path), **load),
                   load_wan_image_encoder(split_paths(image_encoder_path), **load), prompter, **tiler)

    @torch.no_grad()
    def encode(self, batch: dict) -> dict:
        """`video`, `first_frame`, `text` of a batch of one -> T5 `context`, VAE `latents`, CLIP `clip_feature`
        and `y`, each with a batch dimension of 1."""
        video, first_frame, text = batch["video"], batch["first_frame"], batch["text"]
        if video.shape[0] != 1:
            raise ValueError(f"training uses batch_size 1 (as upstream); got a batch of {video.shape[0]}")
        text = text[0] if isinstance(text, (list, tuple)) else text
        device = video.device
        _, _, num_frames, height, width = video.shape
        context = encode_prompt(self.prompter, self.text_encoder, text, device)
        vae_dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(video.to(vae_dtype), progress=False, **self.tiler)
        image = image_to_tensor(first_frame[0].cpu().numpy().astype(np.uint8), height, width)
        clip_feature, y = encode_reference_image(self.image_encoder, self.vae, image, num_frames, device)
        return {"context": context, "latents": latents, "clip_feature": clip_feature, "y": y}


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
        bf16_timestep: round the sampled timestep to bf16 before use, as upstream (995.9 -> 996).
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

    def _fit_pose_guider(self, pose: Dict[str, torch.Tensor], source: str) -> None:
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
        """The release checkpoint: the trainable tensors, plus `network_alpha` for a LoRA (upstream's loader only
        reads keys with 'lora' or a pose marker in them, so it ignores it)."""
        state = self.trainable_state_dict()
        if self.train_architecture == "lora":
            state[ALPHA_KEY] = torch.tensor(float(self.lora_alpha), dtype=torch.float32)
        return state

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
        """Release files: replace Lightning's checkpoint by the flat release dict (readable by `load_lora_v2` and
        upstream). Resumable files: keep Lightning's checkpoint, with only the trainable tensors as state_dict."""
        from .resume import RESUME_KEY  # noqa: PLC0415

        if self.saving_resumable:
            checkpoint["state_dict"] = self.trainable_state_dict()
            checkpoint[RESUME_KEY] = self.training_settings()
            checked = {"state_dict": checkpoint["state_dict"], "optimizer_states": checkpoint.get("optimizer_states")}
        else:
            checkpoint.clear()
            checkpoint.update(self.release_state_dict())
            checked = checkpoint
        bad = find_nonfinite(checked)          # raised before anything is written: no checkpoint of NaN weights
        if bad:
            raise NonFiniteError(f"step {self.global_step}: NaN/Inf in {', '.join(bad)}; no checkpoint written")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming: the checkpoint must come from the same training setup and hold every trainable tensor."""
        from .resume import RESUME_KEY  # noqa: PLC0415

        check_resume_settings(checkpoint.get(RESUME_KEY), self.training_settings(), "the checkpoint")
        state = checkpoint.get("state_dict", {})
        bad = find_nonfinite({"state_dict": state, "optimizer_states": checkpoint.get("optimizer_states", [])})
        if bad:
            raise NonFiniteError(f"the resumable checkpoint holds NaN/Inf in {', '.join(bad)}: resume from an "
                                 "earlier one")
        # A run started from a --pretrained_lora_path guider of another width (that flag is ignored when resuming):
        # rebuild it at the checkpoint's width before Lightning loads the weights and the optimizer.
        self._fit_pose_guider(pose_guider_state_dict(state), "the resumable checkpoint")
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise TrainingError(f"the resumable checkpoint does not fit this model: {len(missing)} trainable tensors "
                                f"missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")

    # -------------------------------------------------------------------------------------------- pretrained
    def load_pretrained(self, path: PathSpec) -> None:
        """Load a UniAnimate checkpoint into the LoRA (or the whole DiT) and the pose guider, strictly.

        `path`: a file; shards (a list or comma-separated); or a folder holding exactly one checkpoint file or the
        complete shards of one export (`<name>-0000i-of-0000n.safetensors|bin`). Errors: several other checkpoint
        files in the folder (ambiguous), missing shards, a file without LoRA tensors (e.g. the base DiT), missing
        LoRA tensors of the configured targets, another rank, a missing or incomplete pose guider, and a stored
        alpha other than `lora_alpha`. A LoRA may be in any layout `load_lora_v2` reads (diffsynth/PEFT, ComfyUI,
        diffusers, kohya: the table in `loading/lora_formats.py`); a pose-guider file beside it is read too.
        """
        from ..loading.files import CheckpointError  # noqa: PLC0415
        from ..loading.lora import read_training_lora  # noqa: PLC0415

        paths = resolve_pretrained_files(split_paths(path))
        source = describe(path)
        full = self.train_architecture == "full"
        if full:
            with Checkpoint(paths) as ckpt:
                keys = list(ckpt.infos)
                # Read only what can be used: a DeepSpeed export also holds the frozen DiT, T5 and VAE (tens of GB).
                wanted = [k for k in keys if is_pose_key(k) or k.startswith("pipe.dit.")]
                state = dict(ckpt.iter_tensors(wanted, dtype=torch.float32))
            pose = pose_guider_state_dict({k: v for k, v in state.items() if is_pose_key(k)})
            dit_state = {strip_lora_prefix(k): v for k, v in state.items() if not is_pose_key(k)}
            looks_like_base = any(k.endswith("self_attn.q.weight") and ".lora_" not in k for k in keys)
        else:
            # Any LoRA layout of the loaders' table (diffsynth/PEFT, ComfyUI, diffusers, kohya), with the pose-guider
            # file beside it; only LoRA, alpha and pose tensors are read.
            try:
                read = read_training_lora(paths, [name for name, _ in self.dit.named_modules()], source)
            except CheckpointError as error:
                raise TrainingError(str(error)) from error
            for alpha, where in read.alphas.items():
                if not np.isclose(alpha, float(self.lora_alpha), rtol=1e-6):
                    raise TrainingError(f"{source} was trained with lora_alpha {alpha:g} (its {where}) but "
                                        f"--lora_alpha is {self.lora_alpha:g}: the LoRA would act "
                                        f"{self.lora_alpha / alpha:g} times as strongly. Pass --lora_alpha "
                                        f"{alpha:g} to continue from it")
            pose, dit_state, looks_like_base = read.pose, read.state, read.looks_like_base
        own = self.dit.state_dict()
        expected = sorted(name for name, p in self.dit.named_parameters() if p.requires_grad)
        unknown = sorted(k for k in dit_state if k not in own)
        if unknown:
            raise TrainingError(f"{source}: {len(unknown)} tensors fit no DiT parameter (e.g. {unknown[:3]}); "
                                "was it trained with other --lora_target_modules or another model?")
        if not dit_state:
            raise TrainingError(
                f"{source} holds no {'DiT weights (pipe.dit.*)' if full else 'LoRA tensors (*.lora_A/B.*)'}"
                + (": it looks like base model weights, not a UniAnimate checkpoint" if looks_like_base else "")
                + f". Expected {len(expected)} tensors such as {expected[0]}")
        missing = [k for k in expected if k not in dit_state]
        if missing:
            raise TrainingError(f"{source} misses {len(missing)} of the {len(expected)} trainable DiT tensors of "
                                f"--lora_target_modules {','.join(self.lora_target_modules)} (e.g. {missing[:4]}). "
                                "Was it trained with other targets, or is a shard missing?")
        bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in dit_state.items() if v.shape != own[k].shape]
        if bad:
            key, got, want = bad[0]
            if ".lora_A." in key or ".lora_B." in key:
                rank = got[0] if ".lora_A." in key else got[1]
                raise TrainingError(f"{source} holds a rank-{rank} LoRA but --lora_rank is {self.lora_rank}: "
                                    f"pass --lora_rank {rank} (and its --lora_alpha) to continue from it")
            raise TrainingError(f"{source}: {key} has shape {got}, the DiT expects {want}")
        self._fit_pose_guider(pose, source)
        own_pose = self.pose_guider.state_dict()
        missing_pose = sorted(k for k in own_pose if k not in pose)
        if missing_pose:
            raise TrainingError(f"{source} misses {len(missing_pose)} of the {len(own_pose)} pose-guider tensors "
                                f"(e.g. {missing_pose[:3]}): a UniAnimate checkpoint holds dwpose_embedding.* and "
                                "randomref_embedding_pose.*")
        self.dit.load_state_dict(dit_state, strict=False)
        self.pose_guider.load_state_dict(pose, strict=True)
        logger.info("loaded %d DiT tensors and %d pose-guider tensors from %s", len(dit_state), len(pose), source)

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


def check_resume_settings(stored: Optional[dict], current: dict, source: str) -> None:
    """Raise when a resumable checkpoint was written by another training setup (architecture, rank, alpha,
    targets): continuing it with this one would silently train something else."""
    if not isinstance(stored, dict):
        raise TrainingError(f"{source} is not a resumable checkpoint of this trainer")
    diffs = [f"{k}: checkpoint {stored.get(k)!r}, now {v!r}" for k, v in current.items() if stored.get(k) != v]
    if diffs:
        raise TrainingError(f"{source} was written by another training setup ({'; '.join(diffs)}); pass the same "
                            "flags to resume it")


def resolve_pretrained_files(spec: PathSpec) -> List[Path]:
    """The files of a `--pretrained_lora_path`: a file; a list of files (shards, as given); or a folder holding one
    checkpoint file, or only the complete shards of one export (`<stem>-0000i-of-0000n.safetensors|bin`)."""
    if not isinstance(spec, (str, os.PathLike)):
        return [Path(p) for p in spec]
    path = Path(spec).expanduser()
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"--pretrained_lora_path not found: {path}")
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        if (path / "zero_to_fp32.py").is_file() or (path / "checkpoint").is_dir():
            raise TrainingError(f"{path} is a DeepSpeed ZeRO checkpoint folder: convert it first with "
                                "`python zero_to_fp32.py . OUT --safe_serialization` (docs/training.md) and pass OUT")
        raise TrainingError(f"{path} holds no checkpoint file ({', '.join(WEIGHT_SUFFIXES)})")
    if len(files) == 1:
        return files
    shards = [SHARD_NAME.fullmatch(p.name) for p in files]
    groups = {(m["stem"], m["total"], m["ext"]) for m in shards if m}
    if all(shards) and len(groups) == 1:
        total = int(next(iter(groups))[1])
        present = {int(m["index"]) for m in shards}
        missing = sorted(set(range(1, total + 1)) - present)
        if missing:
            raise TrainingError(f"{path} holds shards of a {total}-file export but shard(s) {missing} are missing")
        return files
    names = ", ".join(p.name for p in files[:8]) + (f", ... ({len(files)} files)" if len(files) > 8 else "")
    raise TrainingError(f"{path} holds several checkpoint files ({names}), which would be merged into one: pass the "
                        "one file to start from (a folder is accepted when it holds one checkpoint, or only the "
                        "shards <name>-0000i-of-0000n of one export)")


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


__all__ = ["UniAnimateTrainingModule", "TrainingPipe", "FrozenEncoders", "TrainingError", "add_lora", "split_paths",
           "resolve_pretrained_files", "check_resume_settings", "DEFAULT_LORA_TARGETS", "ALPHA_KEY", "ENCODED_KEYS"]
