"""`--task data_process`: encode every training item once, then train without T5, VAE and CLIP.

The frozen encoders do most of the work of a training step on small setups and hold a lot of memory on large
ones, yet their outputs for a given clip never change. `encode_dataset` runs them once per item of the dataset and
writes one safetensors file per item (and per cached epoch):

    <cache>/e000-i000000.safetensors   context [512, 4096], latents [16, T, h, w], clip_feature [257, 1280],
                                       y [20, T, h, w] (the encoder dtype), dwpose_data [3, F, H, W] uint8,
                                       random_ref_dwpose [H, W, 3] uint8; metadata: the caption, the source folder,
                                       the frame indices, the reference frame, the crop box and the settings
    <cache>/cache.json                 the settings and the file list, written last

`CachedDataset` reads them back; `UniAnimateTrainingModule` built without encoder paths trains from them. The
random clip, reference frame and crop of each item are drawn once, here (with `--seed`, the draws of epoch e of an
end-to-end run): epoch e of the training reads cached epoch `e % epochs`, so with one cached epoch every epoch
sees the same clips. Files are written atomically, and a re-run skips the files already written with the same
settings, so an interrupted data_process just continues.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import Dataset, default_collate

from ..data.safe_write import atomic_output, atomic_write_text

logger = logging.getLogger(__name__)

CACHE_FORMAT = "diffsynth.training_cache/1"
MANIFEST = "cache.json"
POSE_KEYS = ("dwpose_data", "random_ref_dwpose")


def cache_file_name(epoch: int, index: int) -> str:
    return f"e{epoch:03d}-i{index:06d}.safetensors"


def _read_metadata(path: Path) -> Dict[str, str]:
    from safetensors import safe_open  # noqa: PLC0415

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


@torch.no_grad()
def encode_item(encoders, item: dict, device) -> Dict[str, torch.Tensor]:
    """One dataset item -> the tensors of its cache file (no batch dimension)."""
    batch = default_collate([item])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    encoded = encoders.encode(batch)
    tensors = {k: v[0].detach().cpu().contiguous() for k, v in encoded.items()}
    tensors["dwpose_data"] = item["dwpose_data"].round().to(torch.uint8).contiguous()      # 0..255 integers
    tensors["random_ref_dwpose"] = item["random_ref_dwpose"].to(torch.uint8).contiguous()
    return tensors


def encode_dataset(dataset, encoders, folder, settings: Dict[str, Any], epochs: int = 1, device="cpu",
                   progress: bool = True) -> dict:
    """Encode items 0..len(dataset)-1 of epochs 0..epochs-1 into `folder` (see the module docstring). `settings`
    (JSON-serialisable) are recorded in every file; files written before with other settings are an error.
    Returns the manifest."""
    from safetensors.torch import save_file  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings_json = json.dumps(settings, sort_keys=True)
    files: List[List[str]] = []
    total, skipped = epochs * len(dataset), 0
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415
        bar = tqdm(total=total, desc="data_process", unit="clip")
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        names = []
        for index in range(len(dataset)):
            name = cache_file_name(epoch, index)
            path = folder / name
            names.append(name)
            if path.is_file():
                stored = _read_metadata(path).get("settings")
                if stored == settings_json:
                    skipped += 1
                    if bar is not None:
                        bar.update()
                    continue
                raise ValueError(f"{path} was written with other settings ({stored}); now {settings_json}. Use "
                                 "another --cached_dataset_path, or delete the folder")
            item = dataset[index]
            tensors = encode_item(encoders, item, device)
            metadata = {
                "format": CACHE_FORMAT, "settings": settings_json, "epoch": str(epoch), "index": str(index),
                "text": item["text"], "source": item["path"],
                "frame_indices": json.dumps(item["frame_indices"].tolist()),
                "ref_index": str(int(item["ref_index"])), "crop_box": json.dumps(item["crop_box"].tolist()),
            }
            with atomic_output(path) as tmp:
                save_file(tensors, str(tmp), metadata=metadata)
            if bar is not None:
                bar.update()
        files.append(names)
    if bar is not None:
        bar.close()
    manifest = {"format": CACHE_FORMAT, "settings": settings, "epochs": epochs, "items_per_epoch": len(dataset),
                "files": files}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    logger.info("data_process: %d clips in %s (%d encoded now, %d already there)", total, folder, total - skipped,
                skipped)
    return manifest


class CachedDataset(Dataset):
    """Items of a `--task data_process` cache: the encoded `context`, `latents`, `clip_feature`, `y`, the pose
    inputs, `text` and `path`. Item i of epoch e comes from cached epoch `e % epochs`."""

    def __init__(self, folder):
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.folder} is not a finished data_process cache (no {MANIFEST}): run "
                                    "`--task data_process --cached_dataset_path` (again: finished files are kept)")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"{manifest_path}: unknown cache format {self.manifest.get('format')!r}")
        self.files = [[self.folder / name for name in names] for names in self.manifest["files"]]
        missing = [str(p) for names in self.files for p in names if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} cache files are missing (e.g. {missing[:3]}): run data_process "
                                    "again")
        self.epoch = 0

    @property
    def settings(self) -> Dict[str, Any]:
        return self.manifest["settings"]

    def __len__(self) -> int:
        return int(self.manifest["items_per_epoch"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def file(self, index: int, epoch: Optional[int] = None) -> Path:
        epoch = self.epoch if epoch is None else epoch
        return self.files[epoch % len(self.files)][index]

    def __getitem__(self, index: int) -> dict:
        from safetensors.torch import load_file  # noqa: PLC0415

        path = self.file(index)
        item: Dict[str, Any] = load_file(str(path))
        metadata = _read_metadata(path)
        item["text"], item["path"] = metadata.get("text", ""), metadata.get("source", str(path))
        return item


__all__ = ["encode_dataset", "encode_item", "CachedDataset", "cache_file_name", "CACHE_FORMAT", "MANIFEST"]
