"""Load Wan2.1 / UniAnimate checkpoints into models: detect -> build on meta -> stream, cast and assign -> place.

Plain functions for notebooks (`load_wan_dit(paths, torch.bfloat16, "cuda")`, ...) and the DiffSynth-style
`ModelManager` that the pipelines take their models from:

    model_manager = ModelManager(device="cpu")
    model_manager.load_models([clip_path], torch_dtype=torch.float32)
    model_manager.load_models([[dit_shard_1, ..., dit_shard_7], t5_path, vae_path], torch_dtype=torch.bfloat16)
    model_manager.load_lora_v2(unianimate_ckpt, lora_alpha=1.0)
    dit = model_manager.fetch_model("wan_video_dit")
    pose_guider = model_manager.fetch_pose_guider(torch_dtype=torch.bfloat16)

Everything that can be checked from the file headers (format, config, every key and shape) is checked before any
tensor is read (`plan.py`), the tensors are streamed in one at a time (`execute.py`), and a model is registered only
once it is completely loaded.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .checks import compare_state_dict
from .errors import CheckpointError
from .execute import Device, assign_tensor, execute_plan
from .files import PathSpec, describe
from .lora import read_lora
from .lora_base_weights import BaseWeights
from .lora_checkpoint import LoraCheckpoint, LoraError, check_alpha
from .lora_entries import LoraSpec, MergedLora, lora_entries
from .lora_merge import MERGE_PRECISIONS, merge_loras
from .lora_pose import pose_guider_state_dict, with_pose_sidecars
from .plan import ConfigSpec, LoadPlan, expected_tensors, plan_load
from .tensors import target_dtype

logger = logging.getLogger(__name__)


def load_model(spec: PathSpec, torch_dtype: Optional[torch.dtype] = None, device: Device = "cpu",
               config: ConfigSpec = None, progress: bool = True, fp8_granularity: str = "channel") -> nn.Module:
    """Load any supported checkpoint (one file, a list of shards, or a directory) as its model.

    Args:
        torch_dtype: dtype of floating weights (None: as stored; fp8 is upcast to bf16). torch.float8_e4m3fn or
            float8_e5m2 stores a DiT's Linear weights in fp8 (`Fp8Linear`, computed in bf16; e4m3fn becomes
            e5m2 on GPUs before Ada) and loads everything else in bf16.
        device: where the weights go, tensor by tensor.
        config: the model config (or a list of configs, matched by type) when the shapes do not determine it,
            e.g. tiny test models; released checkpoints need none.
        fp8_granularity: with an fp8 dtype, the scale of the quantised weights: "channel" (one per output
            channel, default), "tensor" or "none" (plain cast, as DiffSynth does).
    """
    return execute_plan(plan_load(spec, config), torch_dtype, device, progress, fp8_granularity)


def _load_kind(name: str, spec, torch_dtype, device, config, progress, fp8_granularity="channel") -> nn.Module:
    plan = plan_load(spec, config)
    if plan.name != name:
        plan.checkpoint.close()
        raise CheckpointError(f"{plan.source} holds a {plan.name} ({plan.detection.label}), not a {name}")
    return execute_plan(plan, torch_dtype, device, progress, fp8_granularity)


def load_wan_dit(spec: PathSpec, torch_dtype: Optional[torch.dtype] = None, device: Device = "cpu",
                 config=None, progress: bool = True, fp8_granularity: str = "channel"):
    """The Wan2.1 DiT (`WanModel`) from official, diffusers or ComfyUI files (fp8_scaled included); a list of
    shards or a folder. `torch_dtype=torch.float8_e4m3fn` keeps its Linear weights in fp8 (see `load_model`)."""
    return _load_kind("wan_video_dit", spec, torch_dtype, device, config, progress, fp8_granularity)


def load_wan_vae(spec: PathSpec, torch_dtype: Optional[torch.dtype] = None, device: Device = "cpu",
                 config=None, progress: bool = True):
    """The Wan2.1 VAE (`WanVideoVAE`) from `Wan2.1_VAE.pth` (optionally wrapped in `model_state`) or diffusers."""
    return _load_kind("wan_video_vae", spec, torch_dtype, device, config, progress)


def load_wan_text_encoder(spec: PathSpec, torch_dtype: Optional[torch.dtype] = None, device: Device = "cpu",
                          config=None, progress: bool = True):
    """The umT5-XXL encoder (`WanTextEncoder`) from the official `.pth` or transformers names."""
    return _load_kind("wan_video_text_encoder", spec, torch_dtype, device, config, progress)


def load_wan_image_encoder(spec: PathSpec, torch_dtype: Optional[torch.dtype] = None, device: Device = "cpu",
                           config=None, progress: bool = True):
    """The CLIP visual tower (`WanImageEncoder`) from the official open-clip `.pth` (text tower ignored) or
    transformers `CLIPVisionModel` names."""
    return _load_kind("wan_video_image_encoder", spec, torch_dtype, device, config, progress)


def load_pose_guider(state_dict: Dict[str, torch.Tensor], torch_dtype: Optional[torch.dtype] = None,
                     device: Device = "cpu", dit_dim: Optional[int] = None):
    """Build the UniAnimate `PoseGuider` from collected `dwpose_embedding.*` / `randomref_embedding_pose.*`
    tensors (any prefix), strictly: every tensor present, every shape right."""
    from ..models.pose_guider import PoseGuider, pose_guider_config

    sd = pose_guider_state_dict(state_dict)
    if not sd:
        raise CheckpointError("no pose-guider weights (dwpose_embedding.*, randomref_embedding_pose.*) were "
                              "collected: load the UniAnimate checkpoint with model_manager.load_lora_v2(path) "
                              "before building the pipeline")

    config = pose_guider_config(sd, dit_dim)
    if dit_dim is not None and config.out_dim != dit_dim:
        raise CheckpointError(f"the pose guider outputs {config.out_dim} channels but the DiT width is {dit_dim}: "
                              "the UniAnimate checkpoint is for another model size")
    with torch.device("meta"):
        guider = PoseGuider(config)
    diff = compare_state_dict(expected_tensors(guider), sd)
    if not diff.ok:
        raise CheckpointError("pose-guider weights incomplete or wrong:\n  " + "\n  ".join(diff.lines())
                              + "\nLoad every file of the UniAnimate checkpoint with load_lora_v2.")
    for key, tensor in sd.items():
        assign_tensor(guider, key, tensor.to(device=device, dtype=target_dtype(tensor.dtype, torch_dtype)))
    return guider.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------- manager
def _list_sources(sources: Sequence[str]) -> str:
    return ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")


class ModelManager:
    """Holds the loaded models by DiffSynth name ("wan_video_dit", "wan_video_vae", "wan_video_text_encoder",
    "wan_video_image_encoder") with the path each came from, plus the pose-guider tensors collected from
    UniAnimate checkpoints.

    Args:
        torch_dtype: default dtype of floating weights (None: as stored; fp8 upcast to bf16).
        device: default device the weights are loaded onto.
        file_path_list: loaded right away with `load_models`.
        progress: show a progress bar for large loads.
    """

    def __init__(self, torch_dtype: Optional[torch.dtype] = None, device: Device = "cpu",
                 file_path_list: Sequence = (), progress: bool = True):
        self.torch_dtype = torch_dtype
        self.device = device
        self.progress = progress
        self.model: List[nn.Module] = []
        self.model_name: List[str] = []
        self.model_path: List[Any] = []          # a path, or the list of shards, per model
        self.model_format: List[str] = []
        self.pose_state_dict: Dict[str, torch.Tensor] = {}
        self.loras: List[MergedLora] = []        # what load_lora_v2 merged, in order
        self.pose_source: Optional[str] = None   # the LoRA whose pose-guider tensors are in pose_state_dict
        self.base_weights = BaseWeights()        # originals of the weights LoRAs changed (for unload_loras)
        self._unrestorable: List[str] = []       # LoRAs merged with keep_base_weights=False
        if file_path_list:
            self.load_models(file_path_list)

    # -- loading
    def load_model(self, file_path: PathSpec, torch_dtype: Optional[torch.dtype] = None, device: Device = None,
                   config: ConfigSpec = None, fp8_granularity: str = "channel") -> nn.Module:
        """Load one model (a file, a list of shards or a folder) and register it."""
        self.load_models([file_path], torch_dtype, device, config, fp8_granularity)
        return self.model[-1]

    def load_models(self, file_path_list: Sequence, torch_dtype: Optional[torch.dtype] = None, device: Device = None,
                    config: ConfigSpec = None, fp8_granularity: str = "channel") -> None:
        """Load several models; a list entry that is itself a list is one model in shards.

        `torch_dtype=torch.float8_e4m3fn` (the DiffSynth spelling) stores the DiT's Linear weights in fp8 with
        an fp32 scale per output channel (`fp8_granularity`: "channel", "tensor" or "none") and computes in bf16;
        the other models of the call are loaded in bf16.

        Every entry is detected and checked from its headers before any weights are read, so a wrong path or an
        unknown file fails before minutes of loading. The models are registered once all of them are loaded, so
        a failing call (a damaged file, a NaN) leaves the manager as it was.
        """
        if isinstance(file_path_list, (str, bytes)) or not isinstance(file_path_list, Sequence):
            file_path_list = [file_path_list]
        dtype = torch_dtype if torch_dtype is not None else self.torch_dtype
        device = device if device is not None else self.device
        plans: List[LoadPlan] = []
        try:
            for entry in file_path_list:
                plans.append(plan_load(entry, config))
        except BaseException:
            for plan in plans:
                plan.checkpoint.close()
            raise
        loaded: List[nn.Module] = []
        for i, plan in enumerate(plans):
            try:
                loaded.append(execute_plan(plan, dtype, device, self.progress, fp8_granularity))
            except BaseException:
                for later in plans[i + 1:]:
                    later.checkpoint.close()
                raise
        # Registered together: a call that fails (e.g. a NaN in its last file) leaves the manager as it was.
        for entry, plan, model in zip(file_path_list, plans, loaded):
            self.model.append(model)
            self.model_name.append(plan.name)
            self.model_path.append(entry)
            self.model_format.append(plan.detection.label)

    def load_lora_v2(self, file_path: LoraSpec, lora_alpha: float = 1.0, network_alpha: Optional[float] = None,
                     keep_base_weights: bool = False, merge_precision: str = "upstream") -> int:
        """Merge LoRA(s) into the loaded DiT(s) and collect their pose-guider tensors.

        Args:
            file_path: one LoRA, as a file or a list of its shards (e.g. DeepSpeed `zero_to_fp32` safetensors,
                read as one); or several LoRAs as `[(path_a, 1.0), (path_b, 0.5)]`, each merged with its own
                strength (a path in a pair may be a list of shards too). Layouts are recognised by their keys:
                diffsynth/PEFT, ComfyUI/Kijai/LightX2V (with `.diff`/`.diff_b`/`.diff_m` deltas), diffusers and
                kohya. A pose-guider file `X.pose_guider.safetensors` beside `X.safetensors` (written by
                `python -m diffsynth.convert_lora`) is read with it.
            lora_alpha: merge strength of a single LoRA (upstream's name for it): W += lora_alpha * scale * B @ A.
                Leave it at 1.0 with (path, strength) pairs.
            network_alpha: the training `lora_alpha`; scale = network_alpha / rank. When None, an alpha stored
                in the file is used (`network_alpha` tensor, `<module>.alpha`, ...), and without one scale = 1
                (upstream behaviour, right when alpha = rank). Applies to every LoRA of the call.
            keep_base_weights: keep the original of each weight the first time a LoRA changes it, so that
                `unload_loras()` restores the base model bit-exactly. Off by default: it costs CPU memory equal to
                the touched weights as stored (bf16: ~26 GB for a 14B DiT with a LoRA on every block Linear), which
                the usual load-merge-generate run does not need. Without it unload_loras refuses.
            merge_precision: "upstream" (default): bf16/fp16 weights are merged with upstream's operations and
                roundings (`W = W + strength * scale * mm(B, A)` in the weight's dtype, on CUDA when the weight is
                on the CPU and CUDA is available, one LoRA after the other): bit-identical to upstream on the same
                device. "float32": every update of a weight summed in fp32 and rounded once (one rounding, not
                upstream's numbers). fp32 weights are merged in fp32 (`addmm`) and fp8 layers in fp32 either way.
        Returns:
            the number of weights changed.

        The strength (`lora_alpha` or a pair's) must be finite (0 or negative: a warning); `network_alpha` and a
        stored alpha must be positive and finite. Merging the same
        LoRA twice (same files by resolved path, or same tensors under another path or name) logs a warning: its
        update is added a second time. Every tensor is read and checked (NaN/Inf, shapes, names) before the first
        weight changes.
        """
        if merge_precision not in MERGE_PRECISIONS:
            raise ValueError(f"merge_precision must be one of {MERGE_PRECISIONS}, got {merge_precision!r}")
        if network_alpha is not None:
            network_alpha = check_alpha(network_alpha, "network_alpha")
        entries = lora_entries(file_path, lora_alpha)
        read: List[Tuple[Any, float, LoraCheckpoint, str]] = []
        for spec, strength in entries:
            source = describe(spec)
            to_read, sidecars = with_pose_sidecars(spec)
            lora = read_lora(to_read, progress=self.progress)
            for sidecar in sidecars:
                logger.info("%s: also reading the pose guider beside it, %s", source, sidecar)
            read.append((spec, strength, lora, source))
        earlier = list(self.loras)
        for spec, strength, lora, source in read:
            if lora.modules:
                self._warn_if_merged_before(source, lora, earlier)
            earlier.append(MergedLora(spec, lora.files, lora.digest, strength))
        merged = 0
        to_merge = [(lora, strength, network_alpha, source) for _, strength, lora, source in read if lora.modules]
        if to_merge:
            dits = [m for m, n in zip(self.model, self.model_name) if n == "wan_video_dit"]
            if not dits:
                raise LoraError(f"{to_merge[0][3]}: no DiT is loaded to merge the LoRA into; load the DiT first")
            merged = merge_loras(dits, to_merge, self.base_weights if keep_base_weights else None, merge_precision)
            if not keep_base_weights:
                self._unrestorable.extend(source for *_, source in to_merge)
        for spec, strength, lora, source in read:
            self.pose_state_dict.update(lora.pose)
            if lora.pose:
                self.pose_source = source
            self.loras.append(MergedLora(spec, lora.files, lora.digest, strength))
            ranks = sorted({m.rank for m in lora.modules.values() if m.has_factors})
            deltas = sum(len(m.deltas()) + (m.bias is not None) for m in lora.modules.values())
            logger.info("%s (%s layout): merged %d LoRA layers (rank %s) and %d full deltas / lora_B biases at "
                        "strength %s, collected %d pose tensors, skipped %d non-LoRA tensors%s", source, lora.layout,
                        sum(m.has_factors for m in lora.modules.values()), ranks, deltas, strength, len(lora.pose),
                        lora.ignored, f", did not merge {len(lora.unmerged)} (named above)" if lora.unmerged else "")
        return merged

    def unload_loras(self) -> int:
        """Undo every LoRA merged so far: restore the base weights bit-exactly from the CPU copies kept by
        `load_lora_v2`, and forget the merged LoRAs and the pose-guider tensors they brought (a pose guider built
        earlier with `fetch_pose_guider` is a separate module and keeps working). Returns the number of weights
        restored. Refuses (changing nothing) when a LoRA was merged with `keep_base_weights=False`."""
        if self._unrestorable:
            raise LoraError(f"cannot restore the base weights: {_list_sources(self._unrestorable)} were merged with "
                            "keep_base_weights=False; load the DiT again instead")
        restored = self.base_weights.restore()
        logger.info("unloaded %d LoRAs: restored %d weights, forgot %d pose tensors", len(self.loras), restored,
                    len(self.pose_state_dict))
        self.loras.clear()
        self.pose_state_dict.clear()
        self.pose_source = None
        return restored

    def _warn_if_merged_before(self, source: str, lora: LoraCheckpoint, earlier: Sequence[MergedLora]) -> None:
        for before in earlier:
            if before.digest == lora.digest:
                same = "" if before.files == lora.files else f" (same tensors as {describe(before.path)})"
                logger.warning("%s was merged before%s; merging it again adds its update a second time",
                               source, same)
                return
        for before in earlier:
            if before.files == lora.files:
                logger.warning("%s was merged before and its content has changed since; both versions are now "
                               "merged into the DiT", source)
                return

    @property
    def lora_paths(self) -> List[Any]:
        """The paths (or lists of shards) given to load_lora_v2, in order."""
        return [m.path for m in self.loras]

    # -- access
    def fetch_model(self, model_name: str, file_path: Any = None, require_model_path: bool = False):
        """The model registered under `model_name` (the first one, or the one loaded from `file_path`); None when
        absent. With `require_model_path`, returns (model, path)."""
        found = [(m, p) for m, n, p in zip(self.model, self.model_name, self.model_path)
                 if n == model_name and (file_path is None or p == file_path)]
        if not found:
            logger.info("no %s loaded", model_name)
            return (None, None) if require_model_path else None
        if len(found) > 1:
            logger.warning("%d models named %s are loaded; using the first", len(found), model_name)
        return found[0] if require_model_path else found[0][0]

    def fetch_pose_guider(self, torch_dtype: Optional[torch.dtype] = None, device: Device = None):
        """The UniAnimate pose guider built from the tensors `load_lora_v2` collected (strict)."""
        dit = self.fetch_model("wan_video_dit")
        dtype = torch_dtype if torch_dtype is not None else self.torch_dtype
        return load_pose_guider(self.pose_state_dict, dtype, device if device is not None else self.device,
                                dit_dim=dit.config.dim if dit is not None else None)

    @property
    def text_encoder_path(self):
        """Path of the loaded text encoder (the `google/umt5-xxl` tokenizer folder sits beside it)."""
        return self.fetch_model("wan_video_text_encoder", require_model_path=True)[1]

    def __len__(self) -> int:
        return len(self.model)

    def __repr__(self) -> str:
        rows = [f"  {n}: {describe(p)} [{f}]" for n, p, f in zip(self.model_name, self.model_path, self.model_format)]
        return "ModelManager(\n" + "\n".join(rows) + f"\n  pose tensors: {len(self.pose_state_dict)}\n)"


__all__ = [
    "ModelManager", "load_model", "load_wan_dit", "load_wan_vae", "load_wan_text_encoder", "load_wan_image_encoder",
    "load_pose_guider", "plan_load", "expected_tensors",
]
