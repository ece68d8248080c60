"""Checkpoint loading: file readers, structural format detection, the ModelManager and LoRA merging.

See docs/loading.md for the formats, the detection rules, memory behaviour and the LoRA semantics.
"""
from .checks import StateDictDiff, compare_state_dict, summarize_keys
from .errors import CheckpointError, NonFiniteTensorError, UnsafeCheckpointError
from .files import Checkpoint, CheckpointFile, load_state_dict, resolve_paths
from .formats import LAYOUTS, Detection, UnknownFormatError, detect, supported_formats
from .lora import read_lora, read_training_lora
from .lora_checkpoint import LoraCheckpoint, LoraError
from .lora_formats import LoraLayout, register_layout
from .lora_merge import MERGE_PRECISIONS, merge_lora, merge_loras
from .lora_pose import pose_guider_state_dict
from .manager import (ModelManager, load_model, load_pose_guider, load_wan_dit, load_wan_image_encoder,
                      load_wan_text_encoder, load_wan_vae)
from .model_kinds import MODEL_KINDS, ConfigError
from .plan import plan_load

__all__ = [
    "ModelManager", "load_model", "load_wan_dit", "load_wan_vae", "load_wan_text_encoder", "load_wan_image_encoder",
    "load_pose_guider", "load_state_dict", "plan_load",
    "Checkpoint", "CheckpointFile", "resolve_paths", "detect", "supported_formats", "Detection", "LAYOUTS",
    "MODEL_KINDS", "read_lora", "merge_lora", "merge_loras", "read_training_lora", "pose_guider_state_dict",
    "LoraCheckpoint", "LoraLayout", "register_layout", "MERGE_PRECISIONS",
    "compare_state_dict", "StateDictDiff", "summarize_keys",
    "CheckpointError", "UnsafeCheckpointError", "NonFiniteTensorError", "UnknownFormatError", "ConfigError",
    "LoraError",
]
