"""Run by the tests under `torchrun` (gloo, CPU): tiny pipelines with a parallel layout; rank 0 saves the latents.

    torchrun --nproc_per_node=N parallel_worker.py OUT.pt ULYSSES CFG_PARALLEL(0|1) [FSDP(0|1) [RING [WIDTH]]]

Ring attention runs on yunchang; its torch kernel is CUDA-only, so on the CPU its per-block attention is torch's
own CPU flash kernel (the ring algorithm, communication and merging stay yunchang's).
"""
import sys
import tempfile
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from diffsynth.configs import PoseGuiderConfig
from diffsynth.distributed import ParallelConfig, init_parallel
from diffsynth.models.pose_guider import PoseGuider
from diffsynth.models.wan_dit import WanModel
from diffsynth.pipelines import WanUniAnimateLongVideoPipeline, WanUniAnimateVideoPipeline
from diffsynth.tiny import TINY_DIT, build_tiny_models

H, W = 16, 80            # latent 2 x 10 -> 1 x 5 tokens per frame
SHORT_FRAMES = 17        # 5 latent frames: 25 tokens, uneven for 2 and 3 ranks
LONG_FRAMES = 29         # 8 latent frames: windows (0, 5), (3, 8)


def build(seed=0):
    torch.manual_seed(seed)
    models = build_tiny_models(tempfile.mkdtemp(), seed=seed)
    models.dit = WanModel(replace(TINY_DIT, dim=48, num_heads=6)).eval().requires_grad_(False)   # 6 heads: P = 2, 3
    models.pose_guider = PoseGuider(PoseGuiderConfig(out_dim=48)).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in (models.dit, models.pose_guider):
            for _, p in sorted(module.named_parameters()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return models


def inputs(frames):
    rng = np.random.default_rng(0)
    return dict(prompt="a person is dancing", negative_prompt="blurry",
                input_image=Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)),
                dwpose_data=torch.from_numpy(rng.integers(0, 255, (3, frames, H, W))).float(),
                random_ref_dwpose=torch.from_numpy(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)),
                height=H, width=W, num_frames=frames, cfg_scale=1.5, num_inference_steps=5, seed=7, tiled=False,
                progress_bar_cmd=lambda x: x, tea_cache_l1_thresh=1e5, tea_cache_model_id="Wan2.1-I2V-14B-720P")


def cpu_ring_kernel():
    """yunchang's ring step kernel on the CPU: torch's CPU flash attention, which returns the log-sum-exp."""
    import yunchang.ring.ring_pytorch_attn as ring

    def forward(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale)
        return out.transpose(1, 2), lse
    ring.pytorch_attn_forward = forward


def run(ulysses, cfg_parallel, fsdp=False, ring=1):
    """The latents of a short and a long generation (TeaCache on) with this layout; None on ranks > 0."""
    if ring > 1:
        cpu_ring_kernel()
    state = init_parallel(ParallelConfig(ulysses_size=ulysses, ring_size=ring, cfg_parallel=cfg_parallel))
    models = build()
    results = {}
    for name, cls, frames, extra in (("short", WanUniAnimateVideoPipeline, SHORT_FRAMES, {}),
                                     ("long", WanUniAnimateLongVideoPipeline, LONG_FRAMES,
                                      dict(context_size=5, context_overlap=2))):
        pipe = cls.from_models(**vars(models), device="cpu", torch_dtype=torch.float32)
        pipe.show_summary = False
        if state.world_size > 1:
            pipe.enable_parallel(state, dit_fsdp=fsdp, t5_fsdp=fsdp)
            if fsdp:
                assert type(pipe.dit.blocks[0].self_attn.q.weight).__name__ == "DTensor"
        captured = {}
        real_finish = pipe.finish

        def finish(latents, *args, **kwargs):
            captured["latents"] = latents.clone()
            return real_finish(latents, *args, **kwargs)
        pipe.finish = finish
        made = []
        real_new = pipe.step_caches
        pipe.step_caches = lambda *a: made.append(real_new(*a)) or made[-1]
        frames_out = pipe(**inputs(frames), **extra)
        assert (frames_out is None) == (not state.is_main), "only rank 0 returns frames"
        results[name] = captured["latents"]
        results[name + "_skipped"] = torch.tensor([len(c.skipped_steps) for caches in made for c in caches])
        results[name + "_frames"] = torch.from_numpy(np.stack([np.asarray(f) for f in frames_out])) \
            if frames_out is not None else None
    return state, results


if __name__ == "__main__":
    out, ulysses, cfg_parallel = sys.argv[1], int(sys.argv[2]), bool(int(sys.argv[3]))
    fsdp = len(sys.argv) > 4 and bool(int(sys.argv[4]))
    ring = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    if len(sys.argv) > 6:
        W = int(sys.argv[6])
    state, results = run(ulysses, cfg_parallel, fsdp, ring)
    if state.is_main:
        torch.save(results, out)
    if state.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
