"""Weight-file readers: names, shapes and dtypes without reading data, then tensors one at a time.

- `.safetensors` is read with `safe_open`: the header gives every name, shape and dtype; `get_tensor` reads one
  tensor.
- `.pth/.pt/.ckpt/.bin` is read with `torch.load(map_location="cpu", weights_only=True, mmap=True)`: the pickle
  holds only names and storage offsets, the data stays in the mapped file until a tensor is used. Pickles that
  `weights_only` refuses (they would run code) raise `UnsafeCheckpointError`. Wrappers without tensors at the top
  (`{"model_state": {...}}`, Lightning's `{"state_dict": {...}, "epoch": ...}`) are unwrapped.
- A list of paths is one model split in shards (later files win on duplicate names, as `dict.update`); a
  directory means its weight files (only its `.safetensors` files when it has any).

`Checkpoint.iter_tensors` streams shard by shard and casts every tensor to the target dtype/device as it is read,
so a caller that assigns each tensor into a meta-built model peaks at about the final model plus one shard. Every
floating tensor is checked for NaN/Inf as it is read (after the cast, so an overflow to fp16 is caught too):
`NonFiniteTensorError` names the tensor and the file.
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .errors import CheckpointError, NonFiniteTensorError, UnsafeCheckpointError
from .tensors import all_finite, cast, non_finite_error

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
PathSpec = Union[PathLike, Sequence[PathLike]]

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
# Keys under which trainers wrap a state dict (the VAE's `model_state`, Lightning's `state_dict`, DeepSpeed's
# `module`). Unwrapped only when the top level holds no tensors itself.
WRAPPER_KEYS = ("model_state", "state_dict", "module", "model")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)


@dataclass(frozen=True)
class TensorInfo:
    shape: Tuple[int, ...]
    dtype: Optional[torch.dtype]       # None for a dtype torch does not know
    file: Path

    @property
    def nbytes(self) -> int:
        numel = 1
        for n in self.shape:
            numel *= n
        return numel * (self.dtype.itemsize if self.dtype is not None else 1)


# ------------------------------------------------------------------------------------------------- paths
def resolve_paths(spec: PathSpec) -> List[Path]:
    """A file, a directory, or a list of files/directories -> the weight files, in order.

    A directory contributes its weight files sorted by name (`...-00001-of-00007` order), and only its
    `.safetensors` files when it has any, so a Wan release folder resolves to the DiT shards and not to the T5/VAE
    `.pth` files beside them.
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not items:
        raise CheckpointError("no checkpoint path given")
    paths: List[Path] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"checkpoint paths must be str or os.PathLike, got {type(item).__name__}: {item!r}")
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
            safetensors = [p for p in files if p.name.endswith(SAFETENSORS_SUFFIX)]
            files = safetensors or files
            if not files:
                raise CheckpointError(f"directory {str(path)!r} contains no weight file ({', '.join(WEIGHT_SUFFIXES)})")
            paths.extend(files)
        elif path.is_file():
            if not path.name.endswith(WEIGHT_SUFFIXES):
                raise CheckpointError(f"{str(path)!r}: unsupported file type; weight files end with "
                                      f"{', '.join(WEIGHT_SUFFIXES)}")
            paths.append(path)
        else:
            raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    return paths


def describe(spec: Union[PathLike, Sequence]) -> str:
    """Short printable form of a path or a list of shards (for messages)."""
    if isinstance(spec, (str, os.PathLike)):
        return str(spec)
    items = [str(p) for p in spec]
    return items[0] if len(items) == 1 else f"[{items[0]}, ... {len(items)} files]"


# ------------------------------------------------------------------------------------------------- one file
class CheckpointFile:
    """One weight file, opened on first use. `infos` lists names, shapes and dtypes without reading tensor data;
    `read(key)` returns one tensor (its storage owned by the caller)."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.is_safetensors = self.path.name.endswith(SAFETENSORS_SUFFIX)
        self._handle = None                               # safe_open handle
        self._tensors: Optional[Dict[str, torch.Tensor]] = None   # pickle: name -> (mapped) tensor
        self._mapped = False
        self._infos: Optional[Dict[str, TensorInfo]] = None
        self.metadata: Dict[str, str] = {}

    # -- opening
    def _open(self) -> None:
        if self._infos is not None:
            return
        if self.is_safetensors:
            self._open_safetensors()
        else:
            self._open_pickle()

    def _open_safetensors(self) -> None:
        from safetensors import safe_open

        try:
            handle = safe_open(str(self.path), framework="pt", device="cpu")
            infos = {}
            for key in handle.keys():
                view = handle.get_slice(key)
                infos[key] = TensorInfo(tuple(view.get_shape()), _SAFETENSORS_DTYPES.get(view.get_dtype()),
                                        self.path)
            self.metadata = dict(handle.metadata() or {})
        except Exception as e:  # safetensors raises its own SafetensorError (not exported in a stable place)
            raise CheckpointError(
                f"{str(self.path)!r} is not a readable safetensors file ({e}). It may be truncated (an interrupted "
                "download or copy) or corrupt: compare its size with the original and download it again."
            ) from e
        self._handle, self._infos = handle, infos

    def _open_pickle(self) -> None:
        try:
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
                self._mapped = True
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # Legacy (non-zip) torch.save format: no mmap, the whole file is read now.
                obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"{str(self.path)!r}: torch.load(weights_only=True) refused this file because its pickle would "
                "import or call code other than tensor rebuilding. Loading it anyway would run that code. If you "
                "trust its origin, convert it to safetensors in an isolated environment; otherwise discard it. "
                f"Details: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
            ) from e
        except Exception as e:
            raise CheckpointError(f"{str(self.path)!r} could not be read as a torch checkpoint ({type(e).__name__}: "
                                  f"{e}). It may be truncated or corrupt; download it again.") from e
        tensors = _flat_tensors(obj, self.path)
        self._tensors = tensors
        self._infos = {k: TensorInfo(tuple(t.shape), t.dtype, self.path) for k, t in tensors.items()}

    # -- access
    @property
    def infos(self) -> Dict[str, TensorInfo]:
        self._open()
        return self._infos

    def read(self, key: str) -> torch.Tensor:
        """Read one tensor. Pickle-backed tensors are released from this file object once read."""
        self._open()
        if key not in self._infos:
            raise KeyError(f"{key!r} is not in {str(self.path)!r}")
        if self.is_safetensors:
            try:
                return self._handle.get_tensor(key)
            except Exception as e:
                raise CheckpointError(f"{str(self.path)!r}: reading tensor {key!r} failed ({e}); the file may be "
                                      "corrupt") from e
        tensor = self._tensors.pop(key, None)
        if tensor is None:
            raise CheckpointError(f"{str(self.path)!r}: tensor {key!r} was already read")
        # A mapped tensor would keep the file mapping alive inside the model; `cast` copies when the dtype changes.
        return tensor

    def read_cast(self, key: str, dtype: Optional[torch.dtype], device=None, check_finite: bool = True
                  ) -> torch.Tensor:
        """Read one tensor, cast it, and (by default) refuse it when it holds NaN/Inf after the cast."""
        tensor = self.read(key)
        out = cast(tensor, dtype, device)
        if out is tensor and self._mapped:
            out = tensor.clone()      # own the memory: never alias the mapped file
        if check_finite and not all_finite(out):
            raise non_finite_error(self.path, key, tensor, out)
        return out

    def close(self) -> None:
        self._handle = None
        self._tensors = None
        self._infos = None

    def __enter__(self) -> "CheckpointFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _flat_tensors(obj, path: Path) -> Dict[str, torch.Tensor]:
    """Unpickled object -> {name: tensor}: unwrap known wrappers, keep tensors, skip other values (epoch, ...)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict (name -> tensor)")
    while not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if not inner:
            break
        obj = obj[inner[0]]
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        shown = ", ".join(map(repr, list(obj)[:10]))
        raise CheckpointError(f"{str(path)!r} contains no tensors at its top level (keys: {shown})")
    skipped = len(obj) - len(tensors)
    if skipped:
        logger.debug("%s: skipped %d non-tensor entries", path, skipped)
    return tensors


# ------------------------------------------------------------------------------------------------- shards
class Checkpoint:
    """One model stored in one or more files. Tensor names are the union over the files; a name present in
    several files is taken from the last one (the upstream `dict.update` order)."""

    def __init__(self, spec: PathSpec):
        self.paths = resolve_paths(spec)
        self.files = [CheckpointFile(p) for p in self.paths]
        self._infos: Optional[Dict[str, TensorInfo]] = None

    @property
    def infos(self) -> Dict[str, TensorInfo]:
        if self._infos is None:
            infos: Dict[str, TensorInfo] = {}
            for f in self.files:
                infos.update(f.infos)
            self._infos = infos
        return self._infos

    @property
    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {k: v.shape for k, v in self.infos.items()}

    @property
    def metadata(self) -> Dict[str, str]:
        merged: Dict[str, str] = {}
        for f in self.files:
            f.infos  # opens the file
            merged.update(f.metadata)
        return merged

    def nbytes(self, keys: Optional[Iterable[str]] = None) -> int:
        infos = self.infos
        return sum(infos[k].nbytes for k in (infos if keys is None else keys))

    def iter_tensors(self, keys: Optional[Iterable[str]] = None,
                     dtype: Union[torch.dtype, None, Callable[[str], Optional[torch.dtype]]] = None,
                     device=None, progress: bool = False, desc: str = "loading", check_finite: bool = True
                     ) -> Iterator[Tuple[str, torch.Tensor]]:
        """Yield (name, tensor) for `keys` (default: all), file by file, each cast as it is read (`dtype` may be a
        function of the name) and checked for NaN/Inf (`NonFiniteTensorError`). A file is closed (its mapping
        released) as soon as its tensors are done."""
        infos = self.infos
        wanted = list(infos) if keys is None else list(keys)
        missing = [k for k in wanted if k not in infos]
        if missing:
            raise KeyError(f"not in the checkpoint: {missing[:5]}")
        by_file: Dict[Path, List[str]] = {}
        for k in wanted:
            by_file.setdefault(infos[k].file, []).append(k)
        bar = _progress_bar(sum(infos[k].nbytes for k in wanted), progress, desc)
        try:
            for f in self.files:
                for key in by_file.get(f.path, ()):
                    tensor = f.read_cast(key, dtype(key) if callable(dtype) else dtype, device, check_finite)
                    if bar is not None:
                        bar.update(infos[key].nbytes)
                    yield key, tensor
                f.close()
        finally:
            if bar is not None:
                bar.close()

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PROGRESS_MIN_BYTES = 256 * 2**20     # no bar for small loads (tests, tiny models)


def _progress_bar(total: int, progress: bool, desc: str):
    if not progress or total < PROGRESS_MIN_BYTES:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)


def load_state_dict(spec: PathSpec, torch_dtype: Optional[torch.dtype] = None, device="cpu",
                    progress: bool = False, check_finite: bool = True) -> Dict[str, torch.Tensor]:
    """Read file(s) into one flat {name: tensor} dict with the files' own names (no format conversion), casting
    floating tensors to `torch_dtype` as they are read (fp8 is upcast to bf16 when `torch_dtype` is None).
    `check_finite=False` reads NaN/Inf values instead of refusing them (to inspect a damaged file)."""
    with Checkpoint(spec) as ckpt:
        return dict(ckpt.iter_tensors(dtype=torch_dtype, device=device, progress=progress,
                                      check_finite=check_finite))


__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "NonFiniteTensorError", "TensorInfo", "CheckpointFile", "Checkpoint",
    "resolve_paths", "load_state_dict", "describe", "all_finite", "WEIGHT_SUFFIXES",
]
