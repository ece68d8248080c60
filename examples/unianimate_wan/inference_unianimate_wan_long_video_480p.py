"""UniAnimate-DiT inference, long video at 480p (832x480): edit the settings below, then run

    python examples/unianimate_wan/inference_unianimate_wan_long_video_480p.py

Needs the Wan2.1-I2V-14B-720P release and the UniAnimate checkpoint under checkpoints/ (see README.md), or the
shipped tiny demo model (the settings say how), and pose folders made by run_align_pose.py. Writes
outputs/video_480P_long_<reference>_<pose folder>.mp4 as
[reference | pose | generated] at 15 fps.
"""
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from diffsynth.inference import load_unianimate_pipeline, prepare_processes, run_items  # noqa: E402

# ------------------------------------------------------------------------------------------------ settings
WAN_DIR = "checkpoints/Wan2.1-I2V-14B-720P"   # "demo": the shipped tiny demo model, which runs on a CPU (then
                                             # LORA_PATH = None, HEIGHT, WIDTH = 64, 48, CFG_SCALE = 1.0, NUM_INFERENCE_STEPS = 10)
LORA_PATH = "checkpoints/UniAnimate-Wan2.1-14B-Lora-12000.ckpt"   # None: the one beside WAN_DIR (demo: its own)
HEIGHT, WIDTH = 832, 480           # portrait; swap for landscape (multiples of 16)
SEED = 0
MAX_FRAMES = None                # 4k+1 pose frames per video; None = all of them (long-video pipeline)
USE_TEACACHE = False             # about 4x faster, slightly lower quality
FAST = False                     # 4 steps at cfg 1 (preset="fast"); needs DISTILL_LORA, ignores CFG_SCALE and steps
DISTILL_LORA = None              # e.g. "checkpoints/Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors"
CFG_SCALE = 1.5                  # 1.0 halves the time (no negative branch)
NUM_INFERENCE_STEPS = 50
CPU_OFFLOAD = False              # keep one model at a time on the GPU (less GPU memory, slower)
VRAM_MANAGEMENT = False          # stream DiT layers from CPU memory (docs/memory.md); True overrides CPU_OFFLOAD
NUM_PERSISTENT_PARAM_IN_DIT = 6 * 10**9  # with VRAM_MANAGEMENT: DiT parameters kept on the GPU (0: least memory)
FP8_DIT = False                  # store the DiT's Linear weights in fp8 (16.4 GB instead of 32.8 GB)
OVERWRITE = False                # replace an existing output video (otherwise that item is skipped)
ULYSSES_SIZE = 1                 # several GPUs, `torchrun --nproc_per_node=N this_script.py`: ULYSSES_SIZE x
RING_SIZE = 1                    # RING_SIZE x (2 if CFG_PARALLEL) = N splits every video (ring: pip install
CFG_PARALLEL = False             # yunchang); at the defaults each GPU takes its share of TEST_LIST (docs/parallel.md)
TEST_LIST = [                    # [frame_interval, reference image, pose folder]
    [1, "data/images/WOMEN-Blouses_Shirts-id_00004955-01_4_full.jpg",
     "data/saved_pose/WOMEN-Blouses_Shirts-id_00004955-01_4_full"],
    [1, "data/images/musk.jpg", "data/saved_pose/musk"],
    [1, "data/images/WOMEN-Blouses_Shirts-id_00005125-03_4_full.jpg",
     "data/saved_pose/WOMEN-Blouses_Shirts-id_00005125-03_4_full"],
    [1, "data/images/IMG_20240514_104337.jpg", "data/saved_pose/IMG_20240514_104337"],
    [1, "data/images/10.jpg", "data/saved_pose/10"],
    [1, "data/images/taiyi2.jpg", "data/saved_pose/taiyi2"],
]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parallel, device = prepare_processes(ULYSSES_SIZE, CFG_PARALLEL, RING_SIZE)
    pipe = load_unianimate_pipeline(WAN_DIR, LORA_PATH, device=device, torch_dtype=torch.bfloat16,
                                    vram_management=VRAM_MANAGEMENT,
                                    num_persistent_param_in_dit=NUM_PERSISTENT_PARAM_IN_DIT,
                                    dit_dtype=torch.float8_e4m3fn if FP8_DIT else None,
                                    extra_loras=[DISTILL_LORA] if DISTILL_LORA else (), long_video=True,
                                    cpu_offload=CPU_OFFLOAD)
    if parallel is not None:
        pipe.enable_parallel(parallel)
    run_items(pipe, TEST_LIST, "video_480P_long", height=HEIGHT, width=WIDTH, max_frames=MAX_FRAMES, seed=SEED,
              cfg_scale=CFG_SCALE, num_inference_steps=NUM_INFERENCE_STEPS, use_teacache=USE_TEACACHE,
              preset="fast" if FAST else None,
              context_size=21, context_overlap=4, overwrite=OVERWRITE)
