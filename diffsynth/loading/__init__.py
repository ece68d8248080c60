"""Checkpoint loading: file readers, structural format detection, the ModelManager and LoRA merging.

See docs/loading.md for the formats, the detection rules, memory behaviour and the LoRA semantics.
"""
from .checks import StateDictDiff, compare_state_dict, summarize_keys
from .files import (Checkpoint, CheckpointError, CheckpointFile, NonFiniteTensorError, UnsafeCheckpointError,
                    load_state_dict, resolve_paths)
from .formats import LAYOUTS, MODEL_KINDS, ConfigError, Detection, UnknownFormatError, detect, supported_formats
from .lora import (MERGE_PRECISIONS, LoraCheckpoint, LoraError, merge_lora, merge_loras, pose_guider_state_dict,
                   read_lora, read_training_lora)
from .lora_formats import LoraLayout, register_layout
from .manager import (ModelManager, load_model, load_pose_guider, load_wan_dit, load_wan_image_encoder,
                      load_wan_text_encoder, load_wan_vae, plan_load)

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
