"""The demo model: a tiny UniAnimate (Wan2.1-I2V architecture) trained on synthetic mannequin clips, on CPU.

The recipe and evaluation live here, outside the installed package; the model itself (configurations, loader,
`generate`) is `diffsynth.demo.model`.

Retrain: `bash scripts/train_demo_model.sh` (`python -m tools.demo_model`; the shipped model took two runs, about
2.5 h on 2 CPU threads in all, and the script's header has both commands).
Stages, all with this project's own code:

1. data: `diffsynth.demo.synthetic` clips written as `prepare_training_data.py` sample folders (seeds 0..N-1;
   seeds >= HELD_OUT_SEED are never used in training and are what the tests generate); every BYSTANDER_EVERY-th
   clip has a bystander (a second, still figure), where only the reference pose tells the two people apart.
2. VAE: the project's `WanVideoVAE` at width 8 (`DEMO_VAE`), trained here as an autoencoder on the clips' frames
   (MSE + L1, latents kept near unit scale, noise on the latents so the decoder tolerates imperfect ones).
3. Frozen tiny umT5 and CLIP (`diffsynth.tiny.build_tiny_models`, random seeded weights: the caption is constant
   and the reference reaches the DiT mainly through the VAE latent `y`).
4. `--task data_process`: the trainer's encoded-data cache.
5. `--train_architecture full`: the whole tiny DiT and the pose guider (calibrated init: `calibrated_pose_guider`),
   flow matching, from the cache.
6. `--train_architecture lora`: a LoRA fine-tune on top of the stage-5 DiT (`--pretrained_lora_path` carries the
   stage-5 pose guider and a zero-initialised LoRA).
7. export into the release layouts: DiT shards + config.json (stage 5), T5 + `google/umt5-xxl` tokenizer, VAE,
   CLIP, and the UniAnimate file (stage-6 LoRA + pose guider + network_alpha), all safetensors; MODEL_CARD.md.
"""
