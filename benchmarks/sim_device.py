"""A shape-only GPU for the simulator: the project's real code runs on fake tensors (no data, no GPU) while every
live storage, host -> device copy and FLOP is accounted.

    with SimDevice() as sim:
        dit = sim.build(lambda: WanModel(config).to(torch.bfloat16))     # parameters: fake CPU tensors
        ... the pipeline / streamer / model code, unchanged, with device=DEVICE ...
    sim.peak("device"), sim.tracker.h2d, sim.flops

How it works
- `torch._subclasses.fake_tensor.FakeTensorMode` gives every tensor a device and a storage size but no data. The
  simulated GPU is the `meta` device (`DEVICE`); the host is a fake CPU. A fake "cuda" device is not usable on a
  CPU-only PyTorch build: `Tensor.to("cuda")`, `torch.tensor(..., device="cuda")` and Python indexing initialise
  CUDA or take a CUDA device guard before dispatch. Fake meta tensors get CPU dispatch keys (patched
  `Tensor._make_subclass`), so `param.data = x` works between host and device as it does between CPU and CUDA;
  `FakeTensor.data`'s setter follows the new device, and `nn.Module._apply` uses `param.data = fn(param)` (what torch
  does for ordinary tensors) instead of swapping FakeTensor parameters.
- Tensors that are real, on the CPU and small (the scheduler's sigmas and timesteps, a tokenised prompt) stay real,
  so Python control flow (`int(index)`, `float(sigma)`) works: an op whose tensor inputs are all real CPU tensors and
  that creates nothing on the device runs for real; a factory makes a real tensor when small (<= 65,536 elements,
  not a storage buffer); everything else runs on fake tensors. A data-dependent Python value of a fake tensor
  (`bool(torch.isfinite(x).all())`) is assumed to be True / 0 (input checks pass) and counted.
- `MemoryTracker` (a `TorchDispatchMode` above the fake mode) sees every op's outputs and keeps a table of live
  storages keyed by the storage's C pointer, with a `StorageWeakRef` to learn when the last tensor using it is gone
  (the Python storage object is not kept alive by its tensors: a later `untyped_storage()` may return a new one,
  at a reused address, so neither it nor its id can be the key). Dead storages are
  looked for whenever an allocation could set a new peak, so the peak is exact. Live bytes are summed per device
  ("device", "cpu", "pinned") and the peak of each is kept, globally and per named stage. Each device allocation is
  rounded up to 512 bytes, as PyTorch's CUDA caching allocator does. Host -> device copies (`_to_copy`, `copy_`
  across devices) are summed.
- Attention: on meta/CPU `scaled_dot_product_attention` would decompose into the math kernel, which materialises
  the [B, heads, Lq, Lk] score matrix (172 GB per call at 480p). Inside the simulator it is replaced by the kernel a
  GPU runs (`ATTENTION_KERNEL`).
- `apply_rope`'s chunk loop is summarised (`apply_rope_summary`, same peak; `exact_rope=True` runs the loop).

What it cannot see (see docs/memory.md): the caching allocator's fragmentation and block rounding above 512 B, the
CUDA context, cuBLAS/cuDNN/flash workspaces, NCCL buffers, whether the prefetch copy really overlaps the compute,
and real kernel speed. `with_allowance` adds `ALLOWANCE_*` for them in every reported "with allowance" figure.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only
from torch.utils.flop_counter import FlopCounterMode

# What the tracker cannot see, added on top of the simulated allocated peak when a "with allowance" figure is given:
# CUDA context + cuBLAS/cuDNN workspaces (not in torch.cuda.max_memory_allocated at all; ~0.5-1 GiB on an H100),
# and the caching allocator's fragmentation (reserved - allocated; typically 3-10% of the peak).
ALLOWANCE_FIXED_GIB = 1.0
ALLOWANCE_FRACTION = 0.10
ALLOC_ROUND = 512          # the CUDA caching allocator's smallest block
GIB = 2**30

ATTENTION_KERNEL = ("FlashAttention (aten._scaled_dot_product_flash_attention: output + fp32 log-sum-exp) for "
                    "fp16/bf16; memory-efficient attention (aten._scaled_dot_product_efficient_attention) for fp32")


def with_allowance(nbytes: float) -> float:
    """Simulated allocated bytes -> the device memory to plan for (allowance for what the tracker cannot see)."""
    return nbytes * (1 + ALLOWANCE_FRACTION) + ALLOWANCE_FIXED_GIB * GIB


DEVICE = torch.device("meta")   # the simulated GPU (see the module docstring)
_SCALAR = torch.ops.aten._local_scalar_dense.default
_TO_COPY = torch.ops.aten._to_copy.default
_COPY = torch.ops.aten.copy_.default


_NUMPY_DTYPES = {torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16, torch.int32: np.int32,
                 torch.int64: np.int64, torch.bool: np.bool_, torch.float16: np.float16, torch.float32: np.float32,
                 torch.float64: np.float64}


def _leaves(args, kwargs) -> list:
    out = []
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, (list, tuple)):
            out.extend(value)
        else:
            out.append(value)
    return out


def _device_key(t: torch.Tensor, pinned: bool) -> str:
    if t.device.type == DEVICE.type:
        return "device"
    return "pinned" if pinned else "cpu"


@dataclass
class StagePeak:
    name: str
    start: Dict[str, int]
    peak: Dict[str, int] = field(default_factory=dict)
    end: Dict[str, int] = field(default_factory=dict)      # live bytes when the stage ended
    h2d: int = 0
    d2h: int = 0
    flops_start: int = 0
    flops: int = 0
    seconds: float = 0.0


class MemoryTracker(TorchDispatchMode):
    """Live storage bytes per device (see the module docstring); also host <-> device copy bytes and the routing of
    real-vs-fake ops."""

    def __init__(self, fake_mode: FakeTensorMode):
        super().__init__()
        self.fake_mode = fake_mode
        self.live: Dict[int, str] = {}            # storage cdata -> device key
        self.by_device: Dict[str, Dict[int, tuple]] = {"device": {}, "cpu": {}, "pinned": {}}  # cdata -> (ref, n, key)
        self.current: Dict[str, int] = {"device": 0, "cpu": 0, "pinned": 0}
        self.peaks: Dict[str, int] = dict(self.current)
        self.h2d = 0
        self.d2h = 0
        self.h2d_copies = 0
        self.stages: List[StagePeak] = []
        self._open: List[StagePeak] = []
        self.force_fake = False
        self.assumed_scalars = 0

    # ----------------------------------------------------------------------------------------- bookkeeping
    def _purge(self, device: Optional[str] = None) -> None:
        tables = [self.by_device[device]] if device is not None else list(self.by_device.values())
        for table in tables:
            dead = [k for k, (ref, _, _) in table.items() if ref.expired()]
            for k in dead:
                _, nbytes, dev = table.pop(k)
                del self.live[k]
                self.current[dev] -= nbytes

    def track(self, t: torch.Tensor, pinned: bool = False) -> None:
        """Count `t`'s storage from now until its last tensor is gone (no-op if already counted)."""
        if not isinstance(t, torch.Tensor):
            return
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        nbytes = storage.nbytes()
        dev = _device_key(t, pinned)
        if dev == "device":
            nbytes = -(-nbytes // ALLOC_ROUND) * ALLOC_ROUND
        # Lazy release: storages that died are only looked for when this allocation could set a new peak (the peak
        # is what the allocator sees: freed blocks are reused before the total grows).
        ceiling = min([self.peaks.get(dev, 0)] + [stage.peak.get(dev, 0) for stage in self._open])
        if self.current[dev] + nbytes > ceiling:
            self._purge(dev)
        self.live[key] = dev
        self.by_device[dev][key] = (StorageWeakRef(storage), nbytes, dev)
        self.current[dev] += nbytes
        if self.current[dev] > self.peaks.get(dev, 0):
            self.peaks[dev] = self.current[dev]
        for stage in self._open:
            if self.current[dev] > stage.peak.get(dev, 0):
                stage.peak[dev] = self.current[dev]

    def track_module(self, module: torch.nn.Module) -> None:
        for t in list(module.parameters()) + list(module.buffers()):
            self.track(t)

    def refresh(self) -> Dict[str, int]:
        """Drop the storages that died since the last op; returns the live bytes per device."""
        self._purge()
        return dict(self.current)

    # ---------------------------------------------------------------------------------------------- stages
    def begin(self, name: str, flops: int = 0) -> StagePeak:
        self._purge()
        stage = StagePeak(name, dict(self.current), dict(self.current), flops_start=flops)
        stage.seconds = time.perf_counter()
        self._open.append(stage)
        self.stages.append(stage)
        return stage

    def end(self, stage: StagePeak, flops: int = 0) -> StagePeak:
        self._purge()
        self._open.remove(stage)
        stage.end = dict(self.current)
        stage.flops = flops - stage.flops_start
        stage.seconds = time.perf_counter() - stage.seconds
        return stage

    def reset_peaks(self) -> None:
        self._purge()
        self.peaks = dict(self.current)

    # --------------------------------------------------------------------------------------------- dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = _leaves(args, kwargs)
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        wants_device = any(isinstance(a, torch.device) and a.type == DEVICE.type for a in flat)
        real = not wants_device and all(not isinstance(t, FakeTensor) and t.device.type == "cpu" for t in tensors)
        pinned = False
        if "pin_memory" in kwargs:
            # a storage buffer (the streamer's flat buffers pass pin_memory explicitly): always fake
            real = real and bool(tensors)
        if kwargs.get("pin_memory"):
            kwargs = dict(kwargs, pin_memory=False)   # fake tensors cannot be pinned; counted as pinned instead
            pinned = True
        if func is _SCALAR and isinstance(args[0], FakeTensor):
            # A data-dependent Python value (`bool(torch.isfinite(x).all())`, `x.max().item()`) of a tensor that
            # has no data: the input checks are assumed to pass (True, or 0); counted in `assumed_scalars`.
            self.assumed_scalars += 1
            return True if args[0].dtype == torch.bool else 0
        if real and tensors:
            with unset_fake_temporarily():
                out = func(*args, **kwargs)
        elif real and not tensors:
            # A factory on the CPU: real when small (control-flow tensors), fake when large.
            out = self._factory(func, args, kwargs)
        elif not tensors:
            out = func(*args, **kwargs)
        else:
            if wants_device and not all(isinstance(t, FakeTensor) for t in tensors):
                # real inputs made fake first (the fake mode would run a 1-element one for real)
                args, kwargs = tree_map_only(torch.Tensor, self._fake, (args, kwargs))
            out = func(*args, **kwargs)
        # Host <-> device traffic.
        if (func is _TO_COPY or func is _COPY) and tensors and isinstance(out, torch.Tensor):
            src = tensors[-1] if func is _COPY else tensors[0]
            if src.device.type != out.device.type:
                nbytes = src.numel() * src.element_size()
                if out.device.type == DEVICE.type:
                    self.h2d += nbytes
                    self.h2d_copies += 1
                    for stage in self._open:
                        stage.h2d += nbytes
                else:
                    self.d2h += nbytes
                    for stage in self._open:
                        stage.d2h += nbytes
        # New storages: not for views and in-place results (they alias an input's storage).
        if not func.is_view:
            if isinstance(out, torch.Tensor):
                if not any(out is t for t in tensors):
                    self.track(out, pinned)
            elif isinstance(out, (tuple, list)):
                for t in out:
                    if isinstance(t, torch.Tensor) and not any(t is a for a in tensors):
                        self.track(t, pinned)
        return out

    def _fake(self, t: torch.Tensor) -> torch.Tensor:
        return t if isinstance(t, FakeTensor) else self.fake_mode.from_tensor(t)

    def _factory(self, func, args, kwargs):
        size = next((a for a in args if isinstance(a, (list, tuple, torch.Size))), None)
        numel = math.prod(size) if size is not None and all(isinstance(s, int) for s in size) else 0
        if numel <= 1 << 16 and not self.force_fake:
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def apply_rope_summary(x: torch.Tensor, table: torch.Tensor, chunk_bytes: Optional[int] = None) -> torch.Tensor:
    """`diffsynth.models.layers.apply_rope` with its chunk loop summarised, for speed (the loop is 40-80 chunks of
    ~8 ops per call at 480p, 90% of the simulated DiT forward's ops): the same output tensor, and the same transient
    as one chunk of the loop (the compute-precision copy; with a real (cos, sin) table also the products and the
    stack the real-arithmetic branch makes). Elementwise: FlopCounterMode counts no FLOPs for it either way.
    tests/test_simulate.py checks it gives the real function's peak at full size; `SimDevice(exact_rope=True)`
    runs the real loop."""
    from diffsynth.models import layers  # noqa: PLC0415

    b, length, n, dh = x.shape
    compute = table.real.dtype if table.is_complex() else table.dtype
    per_token = b * n * dh * compute.itemsize
    step = max(1, (layers.ROPE_CHUNK_BYTES if chunk_bytes is None else chunk_bytes) // per_token)
    rows = min(step, length)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    xc = torch.empty(b, rows, n, dh, dtype=compute, device=x.device)
    if not table.is_complex():
        # two half-width products alive with the chunk, then the stacked result
        half = [torch.empty(b, rows, n, dh // 2, dtype=compute, device=x.device) for _ in range(2)]
        stacked = torch.empty(b, rows, n, dh, dtype=compute, device=x.device)
        del half, stacked
    del xc
    return out


class SimDevice:
    """Enter to get a fake CUDA device (see the module docstring). `flops=True` also counts FLOPs
    (`torch.utils.flop_counter.FlopCounterMode`, which knows the flash / efficient attention formulas)."""

    def __init__(self, flops: bool = True, exact_rope: bool = False):
        self.exact_rope = exact_rope
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.tracker = MemoryTracker(self.fake_mode)
        self.counter = FlopCounterMode(display=False) if flops else None
        self.counts = {"attention_flash": 0, "attention_efficient": 0}
        self._stack = contextlib.ExitStack()

    # -------------------------------------------------------------------------------------------- figures
    @property
    def flops(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    def peak(self, device: str = "device") -> int:
        self.tracker._purge()
        return self.tracker.peaks.get(device, 0)

    def live(self, device: str = "device") -> int:
        return self.tracker.refresh().get(device, 0)

    @contextlib.contextmanager
    def stage(self, name: str):
        stage = self.tracker.begin(name, self.flops)
        try:
            yield stage
        finally:
            self.tracker.end(stage, self.flops)

    # ------------------------------------------------------------------------------------------- building
    def build(self, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """Build a model with fake CPU parameters (no memory) and count them."""
        self.tracker.force_fake = True
        try:
            module = factory().requires_grad_(False)   # a fake CUDA parameter that requires grad crashes autograd
        finally:
            self.tracker.force_fake = False
        self.tracker.track_module(module)
        return module

    def fake(self, *shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
        """An uninitialised fake tensor (a stand-in input)."""
        with self.fake_mode:
            t = torch.empty(*shape, dtype=dtype, device=device)
        self.tracker.track(t)
        return t

    # ---------------------------------------------------------------------------------------------- patches
    def _sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if attn_mask is not None or query.device.type != DEVICE.type:
            return self._orig_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                   scale=scale, **kw)
        if query.dtype in (torch.float16, torch.bfloat16):
            self.counts["attention_flash"] += 1
            return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                      scale=scale)[0]
        self.counts["attention_efficient"] += 1
        return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, False, dropout_p,
                                                                      is_causal, scale=scale)[0]

    def __enter__(self) -> "SimDevice":
        stack = self._stack
        patch = lambda obj, name, value: stack.enter_context(_patched(obj, name, value))  # noqa: E731
        self._orig_sdpa = F.scaled_dot_product_attention
        patch(F, "scaled_dot_product_attention", self._sdpa)

        orig_make_subclass = torch.Tensor._make_subclass
        orig_numpy = torch.Tensor.numpy
        data_descriptor = torch._C.TensorBase.data

        def make_subclass(cls, *args, **kwargs):
            # Fake "meta" tensors get CPU dispatch keys, so `param.data = x` works between the host and the
            # simulated device (set_data refuses to mix a CPU and a Meta TensorImpl); devices stay apart through
            # FakeTensor's own device attribute, which is what every op checks.
            device = kwargs.get("device_for_backend_keys")
            if cls is FakeTensor and device is not None and torch.device(device).type == DEVICE.type:
                kwargs["device_for_backend_keys"] = torch.device("cpu")
            return orig_make_subclass(cls, *args, **kwargs)

        def fake_data_get(tensor):
            return data_descriptor.__get__(tensor, type(tensor))

        def fake_data_set(tensor, value):
            # set_data swaps the TensorImpl; a FakeTensor keeps its device in a Python attribute: follow it.
            if not isinstance(value, FakeTensor):
                value = self.fake_mode.from_tensor(value)
            data_descriptor.__set__(tensor, value)
            if isinstance(value, FakeTensor):
                tensor.fake_device = value.fake_device

        def module_apply(module, fn, recurse=True):
            """`nn.Module._apply` as torch does it for ordinary tensors (`param.data = fn(param)`, the Parameter
            object kept); torch swaps FakeTensor parameters instead, which fails while the fake mode holds weak
            references to them."""
            if recurse:
                for child in module.children():
                    child._apply(fn)
            for key, param in module._parameters.items():
                if param is not None:
                    with torch.no_grad():
                        param.data = fn(param)
            for key, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[key] = fn(buf)
            return module

        def fake_numpy(tensor, *a, **kw):
            if isinstance(tensor, FakeTensor):   # shape only: a broadcast zero (no memory)
                dtype = _NUMPY_DTYPES.get(tensor.dtype, np.float32)
                return np.broadcast_to(np.zeros((), dtype=dtype), tuple(tensor.shape))
            return orig_numpy(tensor, *a, **kw)

        if not self.exact_rope:
            from diffsynth.models import wan_dit  # noqa: PLC0415
            patch(wan_dit, "apply_rope", apply_rope_summary)
        patch(torch.Tensor, "_make_subclass", staticmethod(make_subclass))
        patch(torch.Tensor, "numpy", fake_numpy)
        patch(FakeTensor, "data", property(fake_data_get, fake_data_set))
        patch(torch.nn.Module, "_apply", module_apply)
        if self.counter is not None:
            stack.enter_context(self.counter)
        stack.enter_context(self.fake_mode)
        stack.enter_context(self.tracker)
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


@contextlib.contextmanager
def _patched(obj, name: str, value):
    missing = object()
    old = obj.__dict__.get(name, missing) if isinstance(obj, type) else getattr(obj, name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, old)


__all__ = ["SimDevice", "MemoryTracker", "with_allowance", "ALLOWANCE_FIXED_GIB", "ALLOWANCE_FRACTION",
           "ATTENTION_KERNEL", "GIB"]
