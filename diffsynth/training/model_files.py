"""The model files of a training run: `--dit_path demo`, the T5 / VAE / CLIP files found beside the DiT (the
release's names or the demo model's, `loading.release`), `--model_config`, and a check that each file exists."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

ENCODER_FLAGS = ("text_encoder", "vae", "image_encoder")


def release_folder(dit_path: Optional[str]) -> Optional[Path]:
    """The folder of the DiT (its first shard's folder, or the folder given)."""
    if not dit_path:
        return None
    first = Path(dit_path.split(",")[0].strip()).expanduser()
    return first if first.is_dir() else first.parent


def resolve_dit_path(dit_path: Optional[str]) -> Optional[str]:
    """`--dit_path demo` (`loading.release.DEMO_NAME`): the shipped demo model's DiT shards; anything else as given."""
    from ..loading.release import DEMO_NAME, demo_files  # noqa: PLC0415

    if dit_path is None or dit_path.strip() != DEMO_NAME:
        return dit_path
    try:
        return ",".join(demo_files().dit)
    except FileNotFoundError as error:
        raise SystemExit(f"--dit_path {DEMO_NAME}: {error}") from error


def resolve_encoder_paths(args) -> None:
    """Fill --text_encoder_path, --vae_path and --image_encoder_path with the files beside the DiT shards when they
    are not given: the Wan2.1 release's names (`WAN_I2V_FILES`), or the demo model's (`DEMO_FILES`, safetensors with
    their config sidecars). A missing file is an error that names it."""
    from ..loading.release import DEMO_FILES, WAN_I2V_FILES  # noqa: PLC0415

    folder = release_folder(args.dit_path)
    for name in ENCODER_FLAGS:
        flag = f"{name}_path"
        if getattr(args, flag):
            continue
        expected = WAN_I2V_FILES[name]
        if folder is None:
            raise SystemExit(f"--{flag} is needed ({expected}), or --dit_path to find it beside the DiT")
        found = [folder / layout[name] for layout in (WAN_I2V_FILES, DEMO_FILES) if (folder / layout[name]).is_file()]
        if not found:
            raise SystemExit(f"--{flag} not given and {expected} is not beside the DiT in {folder} (nor the demo "
                             f"model's {DEMO_FILES[name]}): download the Wan2.1-I2V release there or pass --{flag}")
        setattr(args, flag, str(found[0]))


def load_model_configs(path: Optional[str]) -> list:
    """`--model_config` JSON -> config dataclasses (JSON lists become tuples)."""
    if not path:
        return []
    from ..configs import ClipVisionConfig, UMT5Config, WanDiTConfig, WanVAEConfig  # noqa: PLC0415

    types = {"dit": WanDiTConfig, "text_encoder": UMT5Config, "vae": WanVAEConfig, "image_encoder": ClipVisionConfig}
    data = json.loads(Path(path).read_text())
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise SystemExit(f"--model_config {path}: unknown models {unknown}; use {sorted(types)}")
    configs = []
    for name, fields in data.items():
        try:
            configs.append(types[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}))
        except TypeError as error:
            raise SystemExit(f"--model_config {path}: {name}: {error}") from error
    return configs


def check_model_paths(args) -> None:
    """Every model file named on the command line exists, checked before the first (large) one is loaded."""
    flags = ["dit_path"] + ([] if args.cached_dataset_path else [f"{name}_path" for name in ENCODER_FLAGS])
    for flag in flags:
        for path in (p.strip() for p in str(getattr(args, flag) or "").split(",") if p.strip()):
            if not Path(path).expanduser().exists():
                raise SystemExit(f"--{flag}: {path} not found")


__all__ = ["ENCODER_FLAGS", "release_folder", "resolve_dit_path", "resolve_encoder_paths", "load_model_configs",
           "check_model_paths"]
