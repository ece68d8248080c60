"""Convert a UniAnimate / Wan DiT LoRA between layouts.

    python -m diffsynth.convert_lora IN OUT --to diffsynth|comfy|diffusers [--overwrite] [--network-alpha A]

IN is any layout `load_lora_v2` reads (diffsynth/PEFT, ComfyUI/Kijai/LightX2V, diffusers, kohya; a file, or a
folder of shards). OUT is a `.safetensors` file:

- diffsynth: `pipe.dit.<module>.lora_A.default.weight` / `lora_B` (the UniAnimate trainer's names);
- comfy: `diffusion_model.<module>.lora_down.weight` / `lora_up.weight`;
- diffusers: `transformer.<diffusers module>.lora_A.weight` / `lora_B`.

The scale alpha / r is folded into lora_B (up) and no alpha is written, so every loader (ours, upstream UniAnimate,
ComfyUI, diffusers) merges the same update: exact when alpha / r is a power of two (alpha = r included), otherwise
lora_B is rounded once in its dtype. Full deltas (`.diff`, `.diff_b`, `.diff_m`) are kept under the output layout's
module names; a lora_B bias (diffusers, PEFT `lora_bias`) is written with the scale folded in, as `lora_B.bias`
where the output layout has one and as the module's `.diff_b` otherwise. The pose-guider tensors go to a separate
file beside OUT, `OUT` with `.pose_guider.safetensors` instead of `.safetensors`, which `load_lora_v2` reads
together with OUT (and accepts on its own); the pose-guider file beside IN is read as the loaders do, so the pose
guider survives every conversion. Both files are written atomically; existing files are refused unless
`--overwrite`. Key names come from the layout table (`loading/lora_formats.py`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .data.safe_write import atomic_output, check_output_file
from .loading.files import CheckpointError, describe
from .loading.lora import (LoraCheckpoint, LoraError, check_alpha, check_complete, pose_guider_state_dict,
                           pose_sidecar_path, read_lora, resolve_without_model, with_pose_sidecars)
from .loading import lora_formats
from .loading.lora_formats import LAYOUT_BY_NAME, layout_key

logger = logging.getLogger(__name__)


def convert_state_dict(lora: LoraCheckpoint, layout: str, network_alpha: Optional[float] = None,
                       source: str = "LoRA") -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(LoRA tensors in `layout`, pose-guider tensors under `PoseGuider` names) for a parsed LoRA.

    The scale alpha / r (alpha from `network_alpha`, else the file) is folded into lora_B in fp32, so the output
    needs no alpha. Raises LoraError for incomplete factors, unresolvable kohya names or modules that `layout` has no
    name for."""
    if layout not in lora_formats.WRITABLE_LAYOUTS:
        raise ValueError(f"unknown LoRA layout {layout!r}; choose one of {', '.join(lora_formats.WRITABLE_LAYOUTS)}")
    check_complete(lora, source)
    if network_alpha is not None:
        network_alpha = check_alpha(network_alpha, "--network-alpha")
    has_bias = "bias" in LAYOUT_BY_NAME[layout].write_suffixes
    tensors: Dict[str, torch.Tensor] = {}
    unnamed: List[str] = []
    for name, module in sorted(resolve_without_model(lora, source).items()):
        parts: Dict[str, torch.Tensor] = dict(module.deltas())
        if module.has_factors:
            scale = lora.scale_of(module, network_alpha, name, source)
            fold = (lambda t: t) if scale == 1.0 else (lambda t: (t.to(torch.float32) * scale).to(t.dtype))
            parts.update(A=module.A, B=fold(module.B))
            if module.bias is not None:
                if has_bias:
                    parts["bias"] = fold(module.bias)
                elif "diff_b" in parts:      # both a bias delta and a lora_B bias: one diff_b, summed in fp32
                    parts["diff_b"] = (parts["diff_b"].to(torch.float32) + module.bias.to(torch.float32) * scale
                                       ).to(parts["diff_b"].dtype)
                else:
                    parts["diff_b"] = fold(module.bias)
        for role, tensor in parts.items():
            try:
                key = layout_key(layout, name, role)
            except KeyError:
                unnamed.append(f"{name}.{role}")
                continue
            if key in tensors:
                raise LoraError(f"{source}: two tensors would both be written as {key!r}")
            tensors[key] = tensor.contiguous()
    if unnamed:
        raise LoraError(f"{source}: the {layout} layout has no name for {len(unnamed)} tensors (e.g. "
                        f"{', '.join(unnamed[:3])}); convert to another layout")
    pose = {k: v.contiguous() for k, v in pose_guider_state_dict(lora.pose).items()}
    return tensors, pose


def _save(tensors: Dict[str, torch.Tensor], path: Path, overwrite: bool, metadata: Dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_output(path, replace=overwrite) as temp:
        save_file(tensors, str(temp), metadata=metadata)


def convert_lora(source, output, layout: str, overwrite: bool = False, network_alpha: Optional[float] = None
                 ) -> Tuple[Path, Optional[Path]]:
    """Convert the LoRA `source` (a file, a list of shards or a folder) to `layout` in `output` (.safetensors),
    with its pose-guider tensors in `output`'s `.pose_guider.safetensors` file. Returns (output, pose file or None).

    Refuses existing outputs unless `overwrite` (then a stale pose-guider file beside `output` is removed when the
    new LoRA has none, since `load_lora_v2` would read it with `output`)."""
    output = Path(output).expanduser()
    if not output.name.endswith(".safetensors") or output.name.endswith(".pose_guider.safetensors"):
        raise ValueError(f"output {str(output)!r} must be a .safetensors file name (not *.pose_guider.safetensors, "
                         "which is the name of the pose-guider file written beside it)")
    sidecar = pose_sidecar_path(output)
    name = describe(source)
    to_read, sidecars = with_pose_sidecars(source)     # the pose guider beside IN, as load_lora_v2 reads it
    for found in sidecars:
        logger.info("%s: also reading the pose guider beside it, %s", name, found)
    lora = read_lora(to_read)
    tensors, pose = convert_state_dict(lora, layout, network_alpha, name)
    inputs = list(lora.files)
    check_output_file(output, overwrite=overwrite, inputs=inputs, flag="--overwrite")
    if pose or os.path.lexists(sidecar):
        # A pose-guider file left beside OUT would be merged with it by load_lora_v2: replace or remove it too.
        check_output_file(sidecar, overwrite=overwrite, inputs=inputs, flag="--overwrite")
    metadata = {"format": "pt", "diffsynth_lora_layout": layout, "converted_from": lora.layout}
    if pose:
        _save(pose, sidecar, overwrite, {"format": "pt", "diffsynth_pose_guider": "1"})
    elif os.path.lexists(sidecar):
        os.unlink(sidecar)
        logger.info("removed %s: the new LoRA has no pose guider", sidecar)
    try:
        if tensors:
            _save(tensors, output, overwrite, metadata)
    except BaseException:
        if pose:
            sidecar.unlink(missing_ok=True)      # no pose file without its LoRA
        raise
    if not tensors:
        logger.info("%s holds only pose-guider tensors: wrote %s alone", name, sidecar)
        return sidecar, None
    return output, (sidecar if pose else None)


def _alpha_argument(text: str) -> float:
    try:
        return check_alpha(text, "--network-alpha")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffsynth.convert_lora",
                                     description="Convert a UniAnimate / Wan DiT LoRA between layouts.")
    parser.add_argument("input", help="LoRA file (any supported layout) or folder of shards")
    parser.add_argument("output", help="output .safetensors file (the pose guider goes beside it, "
                                       "OUT.pose_guider.safetensors)")
    parser.add_argument("--to", required=True, choices=lora_formats.WRITABLE_LAYOUTS, help="output layout")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--network-alpha", type=_alpha_argument, default=None,
                        help="training lora_alpha when the input does not store it (scale = alpha / rank)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out, pose = convert_lora(args.input, args.output, args.to, args.overwrite, args.network_alpha)
    except (CheckpointError, ValueError, FileExistsError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}" + (f" and {pose}" if pose else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
