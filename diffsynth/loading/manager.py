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
tensor is read, and a model is registered only once it is completely loaded.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .checks import StateDictDiff, compare_state_dict, summarize_keys
from .files import (FP8_DTYPES, FP8_UPCAST, STORED, Checkpoint, CheckpointError, CheckpointFile,
                    NonFiniteTensorError, PathSpec, all_finite, describe, load_state_dict, target_dtype)
from .formats import (MODEL_KINDS, ConfigError, Detection, ModelKind, UnknownFormatError, closest_layout, detect,
                      looks_like_lora, read_config_json)
from .sidecar import read_config_sidecar
from .lora import (MERGE_PRECISIONS, BaseWeights, LoraCheckpoint, LoraError, check_alpha, check_strength,
                   merge_loras, pose_guider_state_dict, read_lora,
                   with_pose_sidecars)

logger = logging.getLogger(__name__)

Device = Union[str, torch.device, None]
ConfigSpec = Union[Any, Sequence[Any], None]


# ------------------------------------------------------------------------------------------------- assignment
def expected_tensors(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """Names and shapes a checkpoint must provide: parameters and persistent buffers."""
    out = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for mod_name, module in model.named_modules():
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set:
                out[f"{mod_name}.{name}" if mod_name else name] = tuple(buf.shape)
    return out


def assign_tensor(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Replace the (meta) parameter or buffer `key` by `tensor` (frozen: requires_grad=False)."""
    module_path, _, name = key.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    elif name in module._buffers:
        module._buffers[name] = tensor
    else:
        raise KeyError(key)


def _meta_tensors(model: nn.Module) -> List[str]:
    names = [n for n, p in model.named_parameters() if p.is_meta]
    return names + [n for n, b in model.named_buffers() if b.is_meta]


def _check_fit(plan: "LoadPlan", config_given: bool) -> None:
    """Every key and shape of the checkpoint against the meta-built model, before any tensor is read."""
    model = plan.model
    diff = compare_state_dict(expected_tensors(model), plan.detection.official_shapes, plan.kind.optional)
    if diff.ok:
        return
    n_files = len(plan.checkpoint.files)
    if n_files > 1:
        foreign = _files_that_do_not_fit(plan, diff)
        if foreign:
            raise _different_models(plan.source, foreign)
    what = f"{plan.source} ({plan.detection.label})"
    if diff.missing and not (diff.unexpected or diff.mismatched):
        absent = summarize_keys(diff.missing, diff.expected)
        incomplete = (f"the list of {n_files} files looks incomplete" if n_files > 1 else
                      "the checkpoint is incomplete (a shard of a larger set, or an interrupted export?)")
        raise CheckpointError(f"{what}: {incomplete}; {len(diff.missing)} tensors of "
                              f"{type(model).__name__} are absent: {absent} missing.\n"
                              "Pass every shard (a list, or the folder).")
    hint = ("the config passed in does not match the checkpoint" if config_given
            else "a model variant this loader does not know")
    raise CheckpointError(f"{what} does not fit {type(model).__name__}({plan.config}):\n  "
                          + "\n  ".join(diff.lines()) + f"\nLikely cause: {hint}.")


# ------------------------------------------------------------------------------------------------- mixed files
def _different_models(source: str, lines: List[str]) -> CheckpointError:
    return CheckpointError(f"{source}: these files hold different models:\n  " + "\n  ".join(lines)
                           + "\nA list of files is one model in shards: give each model its own entry, e.g. "
                           "load_models([[dit_shard_1, dit_shard_2], vae_path]).")


def _identify(f: CheckpointFile) -> Optional[str]:
    """The model one file holds on its own, when it is complete enough to be recognised."""
    try:
        return detect({k: v.shape for k, v in f.infos.items()}, str(f.path)).label
    except CheckpointError:
        return None


def _conflicting_shapes(checkpoint: Checkpoint) -> Optional[List[str]]:
    """Lines naming a tensor stored in two files with different shapes (shards of one model never do that)."""
    seen: Dict[str, Tuple[Path, Tuple[int, ...]]] = {}
    for f in checkpoint.files:
        for key, info in f.infos.items():
            if key in seen and seen[key][1] != info.shape:
                first, shape = seen[key]
                return [f"{first.name}: {key} {list(shape)}",
                        f"{f.path.name}: {key} {list(info.shape)} (same name, another shape)"]
            seen[key] = (f.path, info.shape)
    return None


def _identify_each(checkpoint: Checkpoint) -> Optional[List[str]]:
    """When files recognised on their own hold different models: one line per file, else None."""
    labels = [_identify(f) for f in checkpoint.files]
    if len({label.split(" (")[0] for label in labels if label}) < 2:
        return None
    return [f"{f.path.name}: {label or 'not recognised on its own (a shard of one of the others?)'}"
            for f, label in zip(checkpoint.files, labels)]


def _explain_unknown_list(checkpoint: Checkpoint, source: str, error: UnknownFormatError) -> None:
    """A list that matches no format: different models side by side, or shards without the first one."""
    mixed = _identify_each(checkpoint)
    if mixed:
        raise _different_models(source, mixed) from None
    shapes = checkpoint.shapes
    closest = None if looks_like_lora(shapes) else closest_layout(shapes)
    if closest is not None and closest[1]:
        layout, absent = closest
        raise CheckpointError(
            f"{source}: the list of {len(checkpoint.files)} files looks incomplete: its tensors look like "
            f"{layout.label} ({summarize_keys(shapes, limit=3)}) but {', '.join(absent)} "
            f"{'is' if len(absent) == 1 else 'are'} missing.\nPass every shard (a list, or the folder).") from error


def _files_that_do_not_fit(plan: "LoadPlan", diff: StateDictDiff) -> Optional[List[str]]:
    """Lines for a list where some files fit the model exactly and others mostly do not; else None."""
    det = plan.detection
    if det.layout.convert is not None:        # keys are combined: no per-file attribution
        return None
    bad, infos = diff.bad_keys, plan.checkpoint.infos
    shapes = {k: (found, want) for k, found, want in diff.mismatched}
    fitting, foreign = [], []
    for f in plan.checkpoint.files:
        official = [det.key_map[k] for k in f.infos if k in det.key_map and infos[k].file == f.path]
        n_bad = sum(k in bad for k in official)
        if official and n_bad == 0:
            fitting.append(f.path.name)
        elif official and 2 * n_bad > len(official):
            example = next(k for k in official if k in bad)
            why = (f"e.g. {example}: file {list(shapes[example][0])}, model {list(shapes[example][1])}"
                   if example in shapes else f"e.g. {example} is not part of it")
            label = _identify(f)
            foreign.append(f"{f.path.name}: {label or 'another model'}; {n_bad} of {len(official)} tensors do not "
                           f"fit the {det.model} of the others ({why})")
    if not (fitting and foreign):
        return None
    return [f"{', '.join(fitting)}: {det.label}, {type(plan.model).__name__}({plan.config})"] + foreign


# ------------------------------------------------------------------------------------------------- plan + load
@dataclass
class LoadPlan:
    """Everything decided from the headers: what to read, as what, into which (meta) model."""

    checkpoint: Checkpoint
    detection: Detection
    kind: ModelKind
    config: Any
    model: nn.Module          # built on the meta device
    source: str

    @property
    def name(self) -> str:
        return self.kind.name


def _pick_config(config: ConfigSpec, kind: ModelKind) -> Optional[Any]:
    if config is None:
        return None
    candidates = list(config) if isinstance(config, (list, tuple)) else [config]
    matching = [c for c in candidates if isinstance(c, kind.config_type)]
    return matching[0] if matching else None


def plan_load(spec: PathSpec, config: ConfigSpec = None) -> LoadPlan:
    """Read headers, detect the format, decide the config and build the model on meta; check every key and
    shape. Reads no tensor data (except for legacy non-zip `.pth` files)."""
    checkpoint = Checkpoint(spec)
    source = describe(spec)
    several = len(checkpoint.files) > 1
    try:
        conflict = _conflicting_shapes(checkpoint) if several else None
        if conflict:
            raise _different_models(source, conflict)
        try:
            detection = detect(checkpoint.shapes, source)
        except UnknownFormatError as e:
            if several:
                _explain_unknown_list(checkpoint, source, e)
            raise
        kind = MODEL_KINDS[detection.model]
        chosen = _pick_config(config, kind)
        if chosen is None:     # a custom size: the configuration written beside the weights
            chosen = read_config_sidecar(checkpoint.paths, kind.config_type)
        try:
            cfg = chosen if chosen is not None else kind.config_from(detection.official_shapes,
                                                                       read_config_json(checkpoint.paths))
        except ConfigError as e:
            if not (e.missing and several):
                raise
            raise CheckpointError(
                f"{source} ({detection.label}): the list of {len(checkpoint.files)} files looks incomplete: "
                f"{', '.join(e.missing)} missing (present: {summarize_keys(detection.official_shapes, limit=3)}).\n"
                "Pass every shard (a list, or the folder).") from e
        with torch.device("meta"):
            model = kind.build(cfg)
        plan = LoadPlan(checkpoint, detection, kind, cfg, model, source)
        _check_fit(plan, chosen is not None)
    except Exception:
        checkpoint.close()
        raise
    if detection.ignored:
        logger.info("%s: ignoring %d tensors that are not part of %s (e.g. %s)", source, len(detection.ignored),
                    kind.name, detection.ignored[0])
    return plan


# ------------------------------------------------------------------------------------------------- fp8
class _Fp8Weights:
    """What the fp8 DiT load does with each weight: the Linear weights (`Fp8Linear`) are kept as stored when the
    file already holds the storage dtype (with the file's ComfyUI `scale_weight`, or scale 1), and are otherwise
    read in fp32 (dequantised with the file's scale, if any) and quantised with `granularity`. Weights of other
    modules that carry a ComfyUI scale are dequantised (W * scale) into their compute dtype."""

    def __init__(self, plan: LoadPlan, torch_dtype, device, granularity: str, base_dtype):
        from ..models.fp8 import GRANULARITIES, fp8_dtype_for_device, fp8_linear_names, quantize_model_fp8

        if granularity not in GRANULARITIES:
            raise ValueError(f"fp8_granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.plan, self.device, self.granularity, self.base_dtype = plan, device, granularity, base_dtype
        det = plan.detection
        self.stored = {det.key_map[k]: info.dtype for k, info in plan.checkpoint.infos.items() if k in det.key_map}
        self.storage: Optional[torch.dtype] = None
        self.linear_weights: set = set()
        if torch_dtype in FP8_DTYPES:
            if plan.name != "wan_video_dit":
                logger.info("%s: fp8 storage applies to the DiT's Linear layers; this %s is loaded in %s",
                            plan.source, plan.name, FP8_UPCAST)
            else:
                self.storage = fp8_dtype_for_device(torch_dtype, device)
                names = fp8_linear_names(plan.model)
                quantize_model_fp8(plan.model, self.storage, granularity, names=names, compute_dtype=FP8_UPCAST)
                self.linear_weights = {n + ".weight" for n in names}
        # ComfyUI scales: small (a scalar or [out] per layer), read up front in fp32.
        self.scales: Dict[str, torch.Tensor] = {}
        if det.scales:
            by_file = {v: k for k, v in det.scales.items()}
            for file_key, t in plan.checkpoint.iter_tensors(list(by_file), dtype=torch.float32, desc="fp8 scales"):
                self.scales[by_file[file_key]] = t

    def read_dtype(self, key: str):
        """The dtype a tensor is read in (see the class doc)."""
        if key in self.linear_weights:
            return STORED if self.stored.get(key) == self.storage else torch.float32
        if key in self.scales:
            return torch.float32
        return self.base_dtype(key)

    def assignments(self, key: str, tensor: torch.Tensor, source: str):
        """(official key, tensor) pairs to assign for one tensor read with `read_dtype`."""
        from ..models.fp8 import dequantize_fp8, quantize_fp8, scale_to_channels

        if key not in self.linear_weights and key not in self.scales:
            return [(key, tensor)]
        scale = None
        if key in self.scales:
            scale = scale_to_channels(self.scales[key], tensor.shape[0], f"{key} scale_weight").to(tensor.device)
        if key in self.linear_weights:
            module = key[: -len(".weight")]
            if tensor.dtype == self.storage:            # kept exactly as stored
                scale = scale if scale is not None else torch.ones(tensor.shape[0], device=tensor.device)
                return [(key, tensor), (module + ".scale", scale)]
            weight = dequantize_fp8(tensor, scale) if scale is not None else tensor
            q, s = quantize_fp8(weight, self.storage, self.granularity)
            return [(key, q), (module + ".scale", s)]
        out = dequantize_fp8(tensor, scale).to(target_dtype(self.stored[key], self.base_dtype(key)))
        if not all_finite(out):
            raise NonFiniteTensorError(f"{source}: tensor {key!r} times its fp8 scale_weight is not finite in "
                                       f"{out.dtype}: load it in a wider dtype (bfloat16 or float32)")
        return [(key, out)]


def execute_plan(plan: LoadPlan, torch_dtype: Optional[torch.dtype] = None, device: Device = "cpu",
                 progress: bool = True, fp8_granularity: str = "channel") -> nn.Module:
    """Stream the tensors into the meta-built model, casting each as it is read; returns the loaded model
    (eval mode, frozen). The plan's files are closed afterwards.

    An fp8 `torch_dtype` (float8_e4m3fn / float8_e5m2) loads a DiT with its Linear layers as `Fp8Linear` (fp8
    weight, fp32 scale per output channel, or per tensor with `fp8_granularity="tensor"`, or none with "none")
    and everything else in bf16; see `diffsynth.models.fp8`. Other models are loaded in bf16."""
    started = time.perf_counter()
    model, det = plan.model, plan.detection
    device = torch.device(device) if device is not None else torch.device("cpu")
    def base_dtype(official_key: str) -> Optional[torch.dtype]:   # one dtype per model (loading/release.py)
        return torch_dtype

    try:
        fp8 = _Fp8Weights(plan, torch_dtype, device, fp8_granularity, base_dtype)
        dtype_for = fp8.read_dtype
        with plan.checkpoint as ckpt:
            if det.layout.convert is None:
                # One tensor at a time: renamed, cast and assigned before the next one is read.
                for file_key, tensor in _stream(ckpt, det, dtype_for, device, progress, plan.name):
                    for key, value in fp8.assignments(det.key_map[file_key], tensor, plan.source):
                        assign_tensor(model, key, value)
            else:
                # Tensors must be combined (CLIP q/k/v -> to_qkv): read the (small) model whole, then convert.
                raw = {det.key_map[k]: t for k, t in _stream(ckpt, det, dtype_for, device, progress, plan.name)}
                for key, tensor in det.layout.convert(raw).items():
                    assign_tensor(model, key, tensor.contiguous())
                del raw
        expected = expected_tensors(model)
        for key in plan.kind.optional:
            if key in expected and _is_meta(model, key):
                logger.info("%s: %s not in the file (unused by Wan); filled with zeros", plan.source, key)
                dtype = target_dtype(torch.float32, base_dtype(key))
                assign_tensor(model, key, torch.zeros(expected[key], dtype=dtype, device=device))
        left = _meta_tensors(model)
        if left:
            raise CheckpointError(f"{plan.source}: {len(left)} tensors were never loaded: {left[:6]}")
        model.to(device)         # non-persistent buffers built on CPU (e.g. the VAE latent statistics)
    except BaseException:
        plan.checkpoint.close()
        raise
    model.eval().requires_grad_(False)
    logger.info("loaded %s (%s) from %s as %s on %s in %.1f s", plan.name, det.label, plan.source,
                f"{fp8.storage} Linear weights + {FP8_UPCAST}" if fp8.storage else torch_dtype or "stored dtype",
                device, time.perf_counter() - started)
    return model


def _stream(ckpt: Checkpoint, det: Detection, dtype_for, device, progress: bool, desc: str):
    """(file key, tensor) in file order, each cast to the dtype its official name asks for."""
    return ckpt.iter_tensors(det.key_map, dtype=lambda file_key: dtype_for(det.key_map[file_key]), device=device,
                             progress=progress, desc=desc)


def _is_meta(model: nn.Module, key: str) -> bool:
    module_path, _, name = key.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    tensor = module._parameters.get(name, module._buffers.get(name))
    return tensor is not None and tensor.is_meta


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


@dataclass(frozen=True)
class MergedLora:
    """One LoRA merged by load_lora_v2: what was given, the files it resolved to (a pose-guider file found beside
    it included), the content digest and the strength it was merged with."""

    path: Any
    files: Tuple[Path, ...]
    digest: str
    strength: float = 1.0


LoraSpec = Union[PathSpec, Tuple[PathSpec, float], Sequence[Tuple[PathSpec, float]]]


def _is_weighted(item: Any) -> bool:
    """`(spec, strength)`: a 2-tuple whose second item is a real number (a path never is)."""
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (int, float))
            and not isinstance(item[1], bool))


def lora_entries(file_path: LoraSpec, lora_alpha: float) -> List[Tuple[PathSpec, float]]:
    """The (spec, strength) pairs of a load_lora_v2 call. A plain path or list is ONE LoRA (a list: its shards)
    merged at `lora_alpha`; `(spec, strength)` or a list of such pairs is one LoRA per pair. Every strength is
    checked (`check_strength`: NaN/Inf refused naming the value, 0 or negative warned)."""
    if _is_weighted(file_path):
        pairs = [file_path]
    elif isinstance(file_path, (list, tuple)) and file_path and all(_is_weighted(x) for x in file_path):
        pairs = list(file_path)
    elif isinstance(file_path, (list, tuple)) and any(isinstance(x, tuple) for x in file_path):
        raise ValueError("load_lora_v2 takes a path, a list of shards of ONE LoRA, or a list of (path, strength) "
                         f"pairs for several LoRAs; got a mixture: {file_path!r}")
    else:
        return [(file_path, check_strength(lora_alpha, describe(file_path)))]
    if lora_alpha != 1.0:
        raise ValueError(f"load_lora_v2 got (path, strength) pairs and lora_alpha={lora_alpha}: give each LoRA's "
                         "strength in its pair, and leave lora_alpha at 1.0")
    return [(spec, check_strength(strength, describe(spec))) for spec, strength in pairs]


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
    "load_pose_guider", "load_state_dict", "plan_load", "execute_plan", "LoadPlan", "expected_tensors", "assign_tensor",
    "MergedLora", "lora_entries",
]
