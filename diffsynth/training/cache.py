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

Nothing stale or broken is used silently: every file records the content hash of its source sample
(`dataset.sample_content_hash`), and the manifest those of all sources. A re-run refuses files written from other
data or with other settings, naming the keys that differ; `CachedDataset` refuses an unreadable manifest or file
(checked when it is opened, before any model loads), a source sample whose content changed since it was encoded
(when the source folder is still there), and an item holding NaN/Inf (when it is read), each naming the file.
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


class CacheError(ValueError):
    """A data_process cache that cannot be used as it is (unreadable, stale, other settings, NaN/Inf values)."""


CACHE_FORMAT = "diffsynth.training_cache/1"
MANIFEST = "cache.json"
POSE_KEYS = ("dwpose_data", "random_ref_dwpose")
ITEM_KEYS = ("context", "latents", "clip_feature", "y", *POSE_KEYS)


def cache_file_name(epoch: int, index: int) -> str:
    return f"e{epoch:03d}-i{index:06d}.safetensors"


def _read_metadata(path: Path) -> Dict[str, str]:
    from safetensors import safe_open  # noqa: PLC0415

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


@torch.no_grad()
def differing_keys(stored: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """`key (stored -> current)` for every key whose value differs."""
    return [f"{k} ({stored.get(k, '<none>')!r} -> {current.get(k, '<none>')!r})"
            for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]


def check_finite_item(tensors: Dict[str, torch.Tensor], where: str) -> None:
    from .resume import find_nonfinite  # noqa: PLC0415

    bad = find_nonfinite(tensors)
    if bad:
        raise CacheError(f"{where}: {', '.join(bad)} holds NaN/Inf values")


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
    hashes = dataset.content_hashes() if hasattr(dataset, "content_hashes") else {}
    folders = [str(f) for f in getattr(dataset, "folders", [])]
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
            # the sample item `index` is drawn from (the dataset's first choice; it never substitutes another)
            source = folders[index % len(folders)] if folders else None
            if path.is_file():
                try:
                    stored = _read_metadata(path)
                except Exception as error:  # noqa: BLE001 - named below
                    raise CacheError(f"{path} is not a readable cache file ({type(error).__name__}: {error}): delete "
                                     "it and run data_process again") from error
                diffs = _stale_keys(stored, settings_json, source, hashes.get(source))
                if not diffs:
                    skipped += 1
                    if bar is not None:
                        bar.update()
                    continue
                raise CacheError(f"{path} was written with other settings or from other data: {'; '.join(diffs)}. "
                                 "Use another --cached_dataset_path, or delete this folder to encode the data again")
            item = dataset[index]
            tensors = encode_item(encoders, item, device)
            check_finite_item(tensors, f"the encoded item {index} of {item['path']} (not written to {path})")
            metadata = {
                "format": CACHE_FORMAT, "settings": settings_json, "epoch": str(epoch), "index": str(index),
                "text": item["text"], "source": item["path"], "source_hash": hashes.get(item["path"], ""),
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
                "files": files, "sources": hashes}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    logger.info("data_process: %d clips in %s (%d encoded now, %d already there)", total, folder, total - skipped,
                skipped)
    return manifest


def _stale_keys(stored: Dict[str, str], settings_json: str, source: Optional[str],
                source_hash: Optional[str]) -> List[str]:
    """Why a cache file cannot be reused for this data and these settings: the differing keys, or []."""
    try:
        old = json.loads(stored.get("settings") or "{}")
    except ValueError:
        old = {}
    diffs = [f"settings: {d}" for d in differing_keys(old, json.loads(settings_json))]
    if source is not None and stored.get("source") != source:
        diffs.append(f"source ({stored.get('source')!r} -> {source!r})")
    elif source_hash is not None and stored.get("source_hash") != source_hash:
        diffs.append(f"source_hash (the content of {source} changed since it was encoded)"
                     if stored.get("source_hash") else "source_hash (not recorded: written by an older version)")
    return diffs


class CachedDataset(Dataset):
    """Items of a `--task data_process` cache: the encoded `context`, `latents`, `clip_feature`, `y`, the pose
    inputs, `text` and `path`. Item i of epoch e comes from cached epoch `e % epochs`.

    Opening it checks the manifest and every file's header and keys, and (`verify_sources`) the content hash of
    each source sample folder that still exists; reading an item checks its values are finite. Each problem is a
    `CacheError` naming the file (or the source folder)."""

    def __init__(self, folder, verify_sources: bool = True):
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not self.folder.is_dir():
            raise CacheError(f"--cached_dataset_path {self.folder} does not exist: run --task data_process first")
        if not manifest_path.is_file():
            raise CacheError(f"{self.folder} is not a finished data_process cache (no {MANIFEST}): run "
                             "`--task data_process --cached_dataset_path` (again: finished files are kept)")
        try:
            self.manifest = json.loads(manifest_path.read_text())
            if not isinstance(self.manifest, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise CacheError(f"{manifest_path} is unreadable ({error}): run data_process again") from error
        if self.manifest.get("format") != CACHE_FORMAT:
            raise CacheError(f"{manifest_path}: unknown cache format {self.manifest.get('format')!r}")
        try:
            self.files = [[self.folder / name for name in names] for names in self.manifest["files"]]
            if not self.files or not all(len(names) == int(self.manifest["items_per_epoch"]) > 0
                                         for names in self.files):
                raise ValueError("no items, or epochs of unequal length")
        except (KeyError, TypeError, ValueError) as error:
            raise CacheError(f"{manifest_path} lists no usable items ({type(error).__name__}: {error}): run "
                             "data_process again") from error
        missing = [str(p) for names in self.files for p in names if not p.is_file()]
        if missing:
            raise CacheError(f"{len(missing)} cache files are missing (e.g. {missing[:3]}): run data_process again")
        for names in self.files:
            for path in names:
                self._check_file(path)
        self.epoch = 0
        if verify_sources:
            self.verify_sources()

    @staticmethod
    def _check_file(path: Path) -> None:
        """Check a cache file's header, keys and format tag (cheap: the tensors are not read)."""
        from safetensors import safe_open  # noqa: PLC0415

        try:
            with safe_open(str(path), framework="pt") as f:
                keys, metadata = set(f.keys()), dict(f.metadata() or {})
        except Exception as error:  # noqa: BLE001 - any unreadable file is named
            raise CacheError(f"{path} is not a readable cache file ({type(error).__name__}: {error}): delete it and "
                             "run data_process again") from error
        missing = [k for k in ITEM_KEYS if k not in keys]
        if missing or metadata.get("format") != CACHE_FORMAT:
            raise CacheError(f"{path} is not a data_process cache item (missing {missing or 'its format tag'}): "
                             "delete it and run data_process again")

    def verify_sources(self) -> None:
        """Refuse a cache whose source samples changed after data_process (content hash of each source folder that
        exists here; folders that are gone cannot be checked and are logged)."""
        from .dataset import sample_content_hash  # noqa: PLC0415

        recorded = self.manifest.get("sources")
        if not recorded:
            logger.warning("%s records no content hashes of its source samples (an older cache): not checked against "
                           "the data", self.folder)
            return
        changed, gone = [], []
        for source, expected in recorded.items():
            if not Path(source).is_dir():
                gone.append(source)
                continue
            try:
                actual = sample_content_hash(Path(source))
            except (OSError, ValueError):
                actual = None
            if actual != expected:
                changed.append(source)
        if gone:
            logger.warning("%d source sample folders of %s are not here (e.g. %s): their content is not checked",
                           len(gone), self.folder, gone[0])
        if changed:
            raise CacheError(f"{self.folder} is stale: the content of {len(changed)} source sample(s) changed since "
                             f"data_process (source_hash of {', '.join(changed[:3])}). Run data_process again into a "
                             "new --cached_dataset_path")

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
        check_finite_item(item, f"{path} (re-run data_process for it)")
        metadata = _read_metadata(path)
        item["text"], item["path"] = metadata.get("text", ""), metadata.get("source", str(path))
        return item


__all__ = ["encode_dataset", "encode_item", "CachedDataset", "CacheError", "cache_file_name", "differing_keys",
           "CACHE_FORMAT", "MANIFEST"]
