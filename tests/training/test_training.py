"""Training: the dataset, the LightningModule's step math, a real Trainer.fit on tiny models, the checkpoint
round trip through `ModelManager.load_lora_v2`, pretrained-LoRA loading and the command line."""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffsynth.loading import ModelManager
from diffsynth.loading.sidecar import sidecar_path
from diffsynth.tiny import build_tiny_models, save_tiny_checkpoints
from diffsynth.training.dataset import (SampleError, UniAnimateDataset, find_sample_folders, random_crop_box,
                                        select_frames)
from training.training_helpers import (CONFIGS, F, H, W, decode, frame_value, pose_value, save_structural_checkpoints,
                                       tiny_argv, write_legacy_sample, write_sample)

pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("peft")

from diffsynth.training import cli  # noqa: E402
from diffsynth.training.module import TrainingError, UniAnimateTrainingModule  # noqa: E402


# ------------------------------------------------------------------------------------------------ sample data
@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    write_sample(root / "long", 12)
    write_sample(root / "nested" / "short", 3, text="a girl waves")
    write_legacy_sample(root / "TikTok" / "00001_mp4", 9)
    return root


# ------------------------------------------------------------------------------------------------ dataset
def test_select_frames_edge_cases():
    rng = np.random.default_rng(0)
    assert select_frames(3, 5, 1, rng) == [0, 1, 2, 2, 2]                 # short: padded with the last frame
    assert select_frames(5, 5, 1, rng) == [0, 1, 2, 3, 4]                 # exactly one clip: every frame
    # Stride 2: the window spans 2 * (5 - 1) + 1 = 9 frames, and starts anywhere it fits.
    assert {select_frames(11, 5, 2, np.random.default_rng(seed))[0] for seed in range(60)} == {0, 1, 2}
    assert select_frames(8, 5, 2, rng) == [0, 1, 2, 3, 4]                 # short for stride 2: stride 1
    assert select_frames(9, 5, 2, rng) == list(range(0, 9, 2))            # N = span: the one window
    for n in range(6, 10):                                                 # N in [cover+1, cover+4]: upstream crashed
        starts = {select_frames(n, 5, 1, np.random.default_rng(seed))[0] for seed in range(60)}
        assert starts == set(range(n - 5 + 1)), n                         # the last frame is reachable
    clip = select_frames(1000, 81, 3, np.random.default_rng(1))
    assert len(clip) == 81 and np.all(np.diff(clip) == 3) and clip[-1] < 1000
    with pytest.raises(ValueError):
        select_frames(0, 5, 1, rng)


def test_random_crop_box_bounds():
    for seed in range(30):
        x1, y1, x2, y2 = random_crop_box(140, 280, np.random.default_rng(seed))
        assert 0 <= x1 <= 10 and 130 <= x2 <= 140 and 0 <= y1 <= 20 and 260 <= y2 <= 280


def test_dataset_items(dataset_root):
    ds = UniAnimateDataset(dataset_root, num_frames=F, height=H, width=W, seed=0)
    assert [p.name for p in ds.folders] == ["00001_mp4", "long", "short"] and len(ds) == 3
    for index, count in ((0, 9), (1, 12), (2, 3)):
        item = ds[index]
        assert item["video"].shape == (3, F, H, W) and item["video"].dtype == torch.float32
        assert -1 <= item["video"].min() and item["video"].max() <= 1
        assert item["dwpose_data"].shape == (3, F, H, W) and 0 <= item["dwpose_data"].min() <= 255
        assert item["dwpose_data"].max() <= 255 and item["dwpose_data"].max() > 1
        assert item["first_frame"].shape == (H, W, 3) and item["first_frame"].dtype == torch.uint8
        assert item["random_ref_dwpose"].shape == (H, W, 3) and item["random_ref_dwpose"].dtype == torch.uint8
        frames = [decode((item["video"][:, f] + 1) * 127.5, frame_value) for f in range(F)]
        poses = [decode(item["dwpose_data"][:, f], pose_value) for f in range(F)]
        assert frames == poses                                            # each frame with its own pose
        if count >= F:
            assert frames == list(range(frames[0], frames[0] + F)) and frames[-1] < count
        else:
            assert frames == [0, 1, 2, 2, 2]
        ref = decode(item["first_frame"], frame_value)
        assert 0 <= ref < count and decode(item["random_ref_dwpose"], pose_value) == ref
        assert item["frame_indices"].tolist() == frames and int(item["ref_index"]) == ref   # the draw is reported
        left, top, right, bottom = item["crop_box"].tolist()
        assert 0 <= left <= 36 // 14 and 36 - 36 // 14 <= right <= 36                # up to 1/14 cut per side
        assert 0 <= top <= 52 // 14 and 52 - 52 // 14 <= bottom <= 52
    assert ds[2]["text"] == "a girl waves" and ds[0]["text"] == "a person is dancing"
    # seeded: the same item again, other draws in another epoch
    again = UniAnimateDataset(dataset_root, num_frames=F, height=H, width=W, seed=0)[1]
    assert torch.equal(again["video"], ds[1]["video"]) and torch.equal(again["first_frame"], ds[1]["first_frame"])
    firsts = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        firsts.add(decode((ds[1]["video"][:, 0] + 1) * 127.5, frame_value))
    assert len(firsts) > 1
    assert len(UniAnimateDataset(dataset_root, num_frames=F, height=H, width=W, samples_per_epoch=7)) == 7


def test_find_sample_folders_follows_symlinks_once(tmp_path):
    root = tmp_path / "data"
    write_sample(root / "a", 3)
    write_sample(tmp_path / "elsewhere" / "b", 3)
    (root / "loop").symlink_to(".", target_is_directory=True)                   # a loop: loop/loop/loop/...
    (root / "b_link").symlink_to(tmp_path / "elsewhere" / "b", target_is_directory=True)
    (root / "nested").mkdir()
    (root / "nested" / "a_again").symlink_to(root / "a", target_is_directory=True)   # a second path to a
    (root / "up").symlink_to(tmp_path, target_is_directory=True)               # reaches elsewhere/b again
    # In a child process with a time limit: without the dedup this walk would go loop/loop/... and up/data/up/...
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as pool:
        found = pool.apply_async(find_sample_folders, (root,)).get(timeout=30)
    assert found == [root / "a", root / "b_link"]
    assert find_sample_folders([root, root / "a", root / "loop"]) == found      # roots seen before are skipped


def test_dataset_crop_is_shared_and_within_bounds(tmp_path):
    # a frame with a 1-pixel white border on a grey field: the border survives only where the crop kept it
    folder = write_sample(tmp_path / "s", 5, size=(56, 56))
    image = np.full((56, 56, 3), 100, np.uint8)
    image[:, :2] = 255
    for sub in ("frames", "poses"):
        for i in range(5):
            Image.fromarray(image).save(folder / sub / f"{i:06d}.png")
            (folder / sub / f"{i:06d}.png").rename(folder / sub / f"{i:06d}.jpg")
    kept = []
    for seed in range(12):
        item = UniAnimateDataset(folder, num_frames=F, height=H, width=W, seed=seed)[0]
        left = item["dwpose_data"][:, :, :, 0]                            # [3, F, H]: the left column
        assert torch.equal(left, left[:, :1].expand_as(left))            # the same crop for every frame
        assert torch.equal(item["first_frame"][:, 0].float(), left[:, 0].t())
        kept.append(bool(left.mean() > 150))
    assert any(kept) and not all(kept)                                    # x1 in [0, 56 // 14] is random


def test_dataset_bad_sample_names_the_folder(tmp_path, caplog):
    bad = write_sample(tmp_path / "bad", 6)
    (bad / "frames" / "000002.jpg").write_bytes(b"not a jpeg")
    ds = UniAnimateDataset(tmp_path, num_frames=F, height=H, width=W, seed=0, max_retries=2)
    with pytest.raises(SampleError, match=str(bad)):
        ds[0]
    assert "skipping unreadable training sample" in caplog.text
    with pytest.raises(FileNotFoundError, match="prepare_training_data"):
        UniAnimateDataset(tmp_path / "bad" / "frames")
    with pytest.raises(ValueError, match="4k\\+1"):
        UniAnimateDataset(tmp_path, num_frames=6)


# ------------------------------------------------------------------------------------------------ module
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    models = build_tiny_models(str(folder / "tok"), seed=1)
    return models, save_tiny_checkpoints(models, str(folder / "ckpt"))


def make_module(tiny, **kwargs):
    _, ckpt = tiny
    args = dict(torch_dtype=torch.float32, configs=CONFIGS, tiled=False, lora_rank=4, lora_alpha=8.0,
                pose_dropout=0.0, reference_dropout=0.0, learning_rate=1e-3)
    args.update(kwargs)
    return UniAnimateTrainingModule(ckpt.dit_shards, ckpt.text_encoder, ckpt.vae, ckpt.image_encoder, **args)


def make_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(1, 3, F, H, W, generator=gen) * 2 - 1,
            "dwpose_data": torch.randint(0, 256, (1, 3, F, H, W), generator=gen).float(),
            "first_frame": torch.randint(0, 256, (1, H, W, 3), generator=gen, dtype=torch.uint8),
            "random_ref_dwpose": torch.randint(0, 256, (1, H, W, 3), generator=gen, dtype=torch.uint8),
            "text": ["a person is dancing"]}


@torch.no_grad()
def reference_loss(module, models, batch, noise, timestep_id, drop_pose, drop_reference):
    """Spec 7.4 written out with the tiny models' own modules, independently of `compute_loss`."""
    video = batch["video"]
    context = models.prompter.encode_prompt(models.text_encoder, batch["text"][0])
    x0 = models.vae.encode(video, progress=False)
    image = batch["first_frame"][0].permute(2, 0, 1)[None].float() / 127.5 - 1
    clip = models.image_encoder.encode_image(image)
    first = models.vae.encode(torch.cat([image[:, :, None], torch.zeros(1, 3, F - 1, H, W)], dim=2), progress=False)
    mask = torch.zeros(1, 4, *first.shape[2:])
    mask[:, :, 0] = 1
    y = torch.cat([mask, first], dim=1)
    poses = batch["dwpose_data"] / 255
    pose_emb = module.dwpose_embedding(torch.cat([poses[:, :, :1]] * 3 + [poses], dim=2))
    ref_emb = module.randomref_embedding_pose(batch["random_ref_dwpose"].permute(0, 3, 1, 2).float() / 255)[:, :, None]
    if drop_pose:
        pose_emb, ref_emb = torch.zeros_like(pose_emb), torch.zeros_like(ref_emb)
    if drop_reference:
        clip, y = torch.zeros_like(clip), torch.zeros_like(y)
    sigmas = torch.linspace(1, 0, 1001)[:-1]
    sigmas = 5 * sigmas / (1 + 4 * sigmas)
    timesteps = sigmas * 1000
    t = timesteps[timestep_id].to(torch.bfloat16).float()
    i = int((timesteps - t).abs().argmin())
    noisy = (1 - sigmas[i]) * x0 + sigmas[i] * noise
    bell = torch.exp(-2 * ((timesteps - 500) / 1000) ** 2)
    weight = ((bell - bell.min()) * 1000 / (bell - bell.min()).sum())[i]
    pred = module.dit(noisy, t[None], context, clip, y + ref_emb, add_condition=pose_emb)
    return torch.mean((pred - (noise - x0)) ** 2) * weight


@pytest.mark.parametrize("drop_pose,drop_reference", [(False, False), (True, False), (False, True)])
def test_training_step_matches_spec(tiny, drop_pose, drop_reference):
    models, _ = tiny
    module = make_module(tiny, pose_dropout=float(drop_pose), reference_dropout=float(drop_reference))
    # give the zero-initialised LoRA B and the pose guider's zero-initialised output layers some weight, so the
    # LoRA and both pose paths take part in the forward
    with torch.no_grad():
        for name, p in module.dit.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
        for name, p in module.pose_guider.named_parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    batch = make_batch()
    noise = torch.randn(1, 16, 2, H // 8, W // 8, generator=torch.Generator().manual_seed(5))
    for timestep_id in (60, 400):          # 987.39 -> 988 in bf16: another grid entry
        loss = module.compute_loss(batch, noise=noise, timestep_id=timestep_id)
        expected = reference_loss(module, models, batch, noise, timestep_id, drop_pose, drop_reference)
        assert torch.isfinite(loss) and loss.item() > 0
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-6, atol=0)   # a 0.4% pose-scale slip moves it 2e-5
    assert float(module.sample_timestep(1)) == 1000.0          # 999.8 rounds to 1000 in bf16, as upstream
    loss.backward()
    pose_grad = module.dwpose_embedding[0].weight.grad
    assert pose_grad is not None and (pose_grad.abs().sum() == 0) == drop_pose


def test_gradient_checkpointing_gives_same_loss_and_grads(tiny, monkeypatch):
    import diffsynth.models.wan_dit as wan_dit

    module = make_module(tiny)
    batch, noise = make_batch(1), torch.randn(1, 16, 2, H // 8, W // 8, generator=torch.Generator().manual_seed(2))
    checkpointed = []        # the flag reaches the DiT's blocks (through pipelines.units.dit_step)
    monkeypatch.setattr(wan_dit, "checkpoint", lambda block, *a, **k: checkpointed.append(block) or
                        torch.utils.checkpoint.checkpoint(block, *a, **k))
    results = []
    for checkpointing in (False, True):
        module.use_gradient_checkpointing = checkpointing
        module.zero_grad()
        loss = module.compute_loss(batch, noise=noise, timestep_id=300)
        loss.backward()
        assert len(checkpointed) == (len(module.dit.blocks) if checkpointing else 0)
        results.append((loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)


def test_lora_targets_and_trainable_names(tiny):
    module = make_module(tiny)
    names = set(module.trainable_state_dict())
    dit_names = {n for n in names if n.startswith("pipe.dit.")}
    targets = {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
               "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"}
    expected = {f"pipe.dit.blocks.{i}.{t}.lora_{ab}.default.weight" for i in range(2) for t in targets for ab in "AB"}
    assert dit_names == expected                                            # no k_img / v_img, embeddings, head
    pose_names = names - dit_names
    assert len(pose_names) == 26 and all(n.split(".")[0] in ("dwpose_embedding", "randomref_embedding_pose")
                                         for n in pose_names)
    assert all(p.dtype == torch.float32 for p in module.trainable_state_dict().values())
    groups = dict(module.trainable_parameter_groups())
    assert len(groups["dit"]) == 40 and len(groups["dwpose_embedding"]) == 14
    full = make_module(tiny, train_architecture="full")
    assert len([n for n in full.trainable_state_dict() if n.startswith("pipe.dit.")]) == \
        len(list(full.dit.parameters()))


def test_fit_checkpoint_round_trip(tiny, dataset_root, tmp_path, monkeypatch):
    models, ckpt = tiny
    pl.seed_everything(0)
    module = make_module(tiny)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    loader = torch.utils.data.DataLoader(UniAnimateDataset(dataset_root, num_frames=F, height=H, width=W, seed=0),
                                         batch_size=1, shuffle=True)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", precision="32-true", logger=False, callbacks=[checkpoints],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    after = dict(module.named_parameters())
    for name, p in after.items():
        changed = not torch.equal(p.detach(), before[name])
        if "lora_B" in name or name.startswith(("dwpose_embedding", "randomref_embedding_pose")):
            assert changed, name
        elif ".lora_A." not in name:
            assert not changed, name                                       # frozen DiT, T5, VAE, CLIP

    # the checkpoint: exactly the trainable tensors, released names, safe to load
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert [f.name for f in files] == ["epoch=0-step=2.ckpt"]
    saved = torch.load(files[0], weights_only=True, map_location="cpu")
    alpha = saved.pop("network_alpha")                                     # the training alpha, 0-dim fp32
    assert alpha.shape == () and alpha.dtype == torch.float32 and float(alpha) == 8.0
    assert saved.keys() == module.trainable_state_dict().keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, after[name].detach()), name

    # released-format loader, called as the scripts do (lora_alpha=1.0, no alpha argument): the stored alpha gives
    # alpha/r = 8/4, so merged DiT == PEFT-wrapped trained DiT; pose guider == trained pose guider
    manager = ModelManager(device="cpu", progress=False)
    manager.load_models([ckpt.dit_shards], torch_dtype=torch.float32)
    assert manager.load_lora_v2(str(files[0]), lora_alpha=1.0) == 20
    merged = manager.fetch_model("wan_video_dit")
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(1, 16, 2, 4, 4, generator=gen), torch.randn(1, 20, 2, 4, 4, generator=gen)
    context, clip = torch.randn(1, 7, 32, generator=gen), torch.randn(1, 5, 32, generator=gen)
    with torch.no_grad():
        expected = module.dit(x, torch.tensor([700.0]), context, clip, y)
        got = merged(x, torch.tensor([700.0]), context, clip, y)
        base = models.dit(x, torch.tensor([700.0]), context, clip, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert (expected - base).abs().max() > 1e-3                            # the LoRA does change the output
    guider = manager.fetch_pose_guider(torch_dtype=torch.float32)
    trained = module.pose_guider.state_dict()
    assert guider.state_dict().keys() == trained.keys()
    for name, tensor in guider.state_dict().items():
        assert torch.equal(tensor, trained[name]), name

    # --pretrained_lora_path: same rank loads every tensor; another rank is a clear error
    resumed = make_module(tiny, pretrained_lora_path=str(files[0]))
    for name, tensor in resumed.trainable_state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    with pytest.raises(TrainingError, match="rank-4 LoRA but --lora_rank is 2"):
        make_module(tiny, lora_rank=2, pretrained_lora_path=str(files[0]))

    # a DeepSpeed-style export also holds frozen weights: only the LoRA and pose tensors are read
    export = {**saved, **{f"pipe.dit.{k}": v for k, v in models.dit.state_dict().items()}}
    torch.save(export, tmp_path / "export.ckpt")
    from diffsynth.loading.files import Checkpoint
    read = []
    original = Checkpoint.iter_tensors

    def spy(self, keys=None, *args, **kwargs):
        if any(p.name == "export.ckpt" for p in self.paths):
            read.extend(keys if keys is not None else self.infos)
        return original(self, keys, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "iter_tensors", spy)
    resumed = make_module(tiny, pretrained_lora_path=str(tmp_path / "export.ckpt"))
    assert read and all(".lora_" in k or k.startswith(("dwpose", "randomref")) for k in read), read[:5]
    for name, tensor in resumed.trainable_state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_pretrained_lora_path_is_strict(tiny, tmp_path):
    models, ckpt = tiny
    release = torch.load(ckpt.unianimate, weights_only=True)              # rank-2 LoRA on every target + pose guider
    lora = {k: v for k, v in release.items() if ".lora_" in k}
    pose = {k: v for k, v in release.items() if ".lora_" not in k}
    make = dict(lora_rank=2, lora_alpha=8.0)

    def path(name, state):
        torch.save(state, tmp_path / name)
        return str(tmp_path / name)

    # the whole file loads, with or without a stored alpha equal to --lora_alpha
    module = make_module(tiny, **make, pretrained_lora_path=path("ok.ckpt", {**release,
                                                                             "network_alpha": torch.tensor(8.0)}))
    assert all(torch.equal(module.trainable_state_dict()[k], v) for k, v in release.items())
    with pytest.raises(TrainingError, match="lora_alpha 4 .*--lora_alpha is 8.*--lora_alpha 4"):
        make_module(tiny, **make, pretrained_lora_path=path("a4.ckpt", {**release, "network_alpha": torch.tensor(4.0)}))
    # some LoRA tensors missing: named
    dropped = "pipe.dit.blocks.1.ffn.2.lora_B.default.weight"
    with pytest.raises(TrainingError, match=r"misses 1 of the 40 .*blocks\.1\.ffn\.2\.lora_B"):
        make_module(tiny, **make, pretrained_lora_path=path("part.ckpt", {k: v for k, v in release.items()
                                                                           if k != dropped}))
    # no LoRA at all: the base DiT shards
    with pytest.raises(TrainingError, match="holds no LoRA tensors.*base model weights"):
        make_module(tiny, **make, pretrained_lora_path=",".join(ckpt.dit_shards))
    # no pose guider
    with pytest.raises(TrainingError, match="misses 26 of the 26 pose-guider tensors"):
        make_module(tiny, **make, pretrained_lora_path=path("lora_only.ckpt", lora))

    # folders: one checkpoint is fine; the complete shards of one export are fine; anything else is refused
    one = tmp_path / "one"
    one.mkdir()
    torch.save(release, one / "UniAnimate.ckpt")
    make_module(tiny, **make, pretrained_lora_path=str(one))
    torch.save(release, one / "epoch=0-step=200.ckpt")
    with pytest.raises(TrainingError, match=r"several checkpoint files \(UniAnimate\.ckpt, epoch=0-step=200\.ckpt\)"):
        make_module(tiny, **make, pretrained_lora_path=str(one))
    from safetensors.torch import save_file
    shards = tmp_path / "export"
    shards.mkdir()
    save_file({k: v.contiguous() for k, v in lora.items() if "lora_A" in k},
              shards / "model-00001-of-00002.safetensors")
    save_file({k: v.contiguous() for k, v in {**pose, **lora}.items() if "lora_A" not in k},
              shards / "model-00002-of-00002.safetensors")
    module = make_module(tiny, **make, pretrained_lora_path=str(shards))
    assert all(torch.equal(module.trainable_state_dict()[k], v) for k, v in release.items())
    (shards / "model-00002-of-00002.safetensors").rename(shards / "model-00002-of-00003.safetensors")
    with pytest.raises(TrainingError, match="several checkpoint files"):
        make_module(tiny, **make, pretrained_lora_path=str(shards))
    (shards / "model-00001-of-00002.safetensors").rename(shards / "model-00001-of-00003.safetensors")
    with pytest.raises(TrainingError, match=r"shard\(s\) \[3\] are missing"):
        make_module(tiny, **make, pretrained_lora_path=str(shards))
    zero = tmp_path / "epoch=0-step=500.ckpt"
    (zero / "checkpoint").mkdir(parents=True)
    with pytest.raises(TrainingError, match="DeepSpeed ZeRO checkpoint folder.*zero_to_fp32"):
        make_module(tiny, **make, pretrained_lora_path=str(zero))


def test_pretrained_pose_guider_of_another_width_is_trained_at_its_own_width(tiny, tmp_path):
    """The demo model's pose guider is 8 channels wide (released: 16): --pretrained_lora_path brings its width,
    the optimizer trains it, and a guider for another DiT width is refused by name."""
    from diffsynth.configs import PoseGuiderConfig
    from diffsynth.models.pose_guider import PoseGuider

    models, ckpt = tiny
    release = torch.load(ckpt.unianimate, weights_only=True)
    lora = {k: v for k, v in release.items() if ".lora_" in k}
    torch.manual_seed(3)
    narrow = PoseGuider(PoseGuiderConfig(hidden_dim=8, out_dim=models.dit.config.dim)).state_dict()
    torch.save({**lora, **narrow}, tmp_path / "narrow.ckpt")
    module = make_module(tiny, lora_rank=2, pretrained_lora_path=str(tmp_path / "narrow.ckpt"))
    assert module.pose_guider.config.hidden_dim == 8
    assert module.dwpose_embedding is module.pose_guider.dwpose_embedding      # the registered modules are it
    for name, tensor in narrow.items():
        assert torch.equal(module.trainable_state_dict()[name], tensor), name
    optimizer = module.configure_optimizers()
    before = module.dwpose_embedding[0].weight.detach().clone()
    module.compute_loss(make_batch(), timestep_id=300).backward()
    optimizer.step()
    assert not torch.equal(module.dwpose_embedding[0].weight, before)           # the narrow guider is trained
    assert module.trainable_state_dict()["dwpose_embedding.0.weight"].shape[0] == 8

    wide = PoseGuider(PoseGuiderConfig(hidden_dim=8, out_dim=models.dit.config.dim * 2)).state_dict()
    torch.save({**lora, **wide}, tmp_path / "wide.ckpt")
    with pytest.raises(TrainingError, match=f"outputs {models.dit.config.dim * 2} channels but the DiT width"):
        make_module(tiny, lora_rank=2, pretrained_lora_path=str(tmp_path / "wide.ckpt"))


def test_resuming_rebuilds_a_pose_guider_of_another_width(tiny, tmp_path):
    """--resume ignores --pretrained_lora_path, so a run started from an 8-wide guider is resumed into a module
    built at the released width: the checkpoint's shapes decide, and its tensors load strictly."""
    from diffsynth.configs import PoseGuiderConfig
    from diffsynth.models.pose_guider import PoseGuider
    from diffsynth.training.resume import RESUME_KEY

    models, _ = tiny
    trained = make_module(tiny, lora_rank=2)
    trained._set_pose_guider(PoseGuider(PoseGuiderConfig(hidden_dim=8, out_dim=models.dit.config.dim)))
    checkpoint = {"state_dict": trained.trainable_state_dict(), RESUME_KEY: trained.training_settings()}
    resumed = make_module(tiny, lora_rank=2)
    assert resumed.pose_guider.config.hidden_dim == 16
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.pose_guider.config.hidden_dim == 8 and resumed.dwpose_embedding is resumed.pose_guider.dwpose_embedding
    resumed.load_state_dict(checkpoint["state_dict"], strict=False)
    for name, tensor in checkpoint["state_dict"].items():
        assert torch.equal(resumed.trainable_state_dict()[name], tensor), name


# ------------------------------------------------------------------------------------------------ command line
def test_cli_defaults_and_flags():
    required = ["--dataset_path", "d", "--dit_path", "a.safetensors,b.safetensors", "--text_encoder_path", "t",
                "--vae_path", "v", "--image_encoder_path", "c"]
    args = cli.parse_args(required)
    assert args.task == "train" and args.tiled and args.lora_rank == 4 and args.lora_alpha == 4.0
    assert args.lora_target_modules == "q,k,v,o,ffn.0,ffn.2" and args.init_lora_weights == "kaiming"
    assert args.height == 832 and args.width == 480 and args.num_frames == 81 and args.learning_rate == 1e-5
    assert args.precision == ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    assert not any("/mnt" in str(v) for v in vars(args).values())
    assert not cli.parse_args(required + ["--no-tiled"]).tiled
    assert cli.weight_dtype("bf16-mixed") == torch.bfloat16 and cli.weight_dtype("32-true") == torch.float32
    assert args.text_encoder_path == "t" and cli.parse_args(["--dit_path", "x"]).vae_path is None
    with pytest.raises(SystemExit, match="--dit_path is required"):
        cli.build_module(cli.parse_args(["--dataset_path", "d"]))          # no author paths to fall back on
    assert args.num_nodes == 1
    trainer = cli.build_trainer(cli.parse_args(required + ["--num_nodes", "2", "--devices", "1", "--output_path",
                                                           tempfile.mkdtemp()]))
    assert trainer.num_nodes == 2                                          # reaches Lightning (several machines)
    with pytest.raises(SystemExit, match="--dataset_path .* is required"):
        cli.build_dataset(cli.parse_args(["--dit_path", "x"]))


def test_cli_finds_the_encoders_beside_the_dit(tmp_path):
    for name in ("diffusion_pytorch_model-00001-of-00002.safetensors", "models_t5_umt5-xxl-enc-bf16.pth",
                 "Wan2.1_VAE.pth", "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"):
        (tmp_path / name).write_bytes(b"")
    shard = str(tmp_path / "diffusion_pytorch_model-00001-of-00002.safetensors")
    for dit_path in (f"{shard},{shard}", str(tmp_path)):                  # shards, or the release folder
        args = cli.parse_args(["--dit_path", dit_path, "--vae_path", "my_vae.pth"])
        cli.resolve_encoder_paths(args)
        assert args.text_encoder_path == str(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
        assert args.image_encoder_path == str(tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
        assert args.vae_path == "my_vae.pth"                               # given paths are kept
    (tmp_path / "Wan2.1_VAE.pth").unlink()
    expected = f"--vae_path not given and Wan2.1_VAE.pth is not beside the DiT in {tmp_path}"
    with pytest.raises(SystemExit, match=expected):
        cli.resolve_encoder_paths(cli.parse_args(["--dit_path", shard]))


def test_deepspeed_is_optional(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_deepspeed(name, *args, **kwargs):
        if name == "deepspeed":
            raise ImportError("No module named 'deepspeed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_deepspeed)
    assert cli.resolve_strategy("auto") == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)     # with a GPU, a missing DeepSpeed is named
    with pytest.raises(SystemExit, match="pip install deepspeed"):
        cli.resolve_strategy("deepspeed_stage_2")


def test_cli_train_end_to_end(tiny, dataset_root, tmp_path):
    _, ckpt = tiny
    args = cli.parse_args([
        "--dataset_path", str(dataset_root), "--output_path", str(tmp_path), "--dit_path", ",".join(ckpt.dit_shards),
        "--text_encoder_path", ckpt.text_encoder, "--vae_path", ckpt.vae, "--image_encoder_path", ckpt.image_encoder,
        "--num_frames", str(F), "--height", str(H), "--width", str(W), "--no-tiled", "--max_steps", "1",
        "--save_every_n_steps", "1", "--dataloader_num_workers", "0", "--precision", "32-true", "--seed", "0",
        "--use_gradient_checkpointing"])
    trainer = cli.train(args, configs=CONFIGS)
    assert trainer.global_step == 1
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["epoch=0-step=1.ckpt", "last.ckpt", "resume-epoch=0-step=1.ckpt"]     # + the resumable one
    saved = torch.load(folder / "epoch=0-step=1.ckpt", weights_only=True)
    assert len(saved) == 40 + 26 + 1 and float(saved["network_alpha"]) == 4.0
    assert all(k.startswith(("pipe.dit.", "dwpose_", "randomref_")) for k in saved if k != "network_alpha")


@pytest.fixture(scope="module")
def structural(tmp_path_factory):
    return save_structural_checkpoints(tmp_path_factory.mktemp("structural"))


def test_cli_main_needs_no_model_configs(structural, tiny, dataset_root, tmp_path):
    # The README command: only --dit_path; the encoders are found beside it, every config comes from the files.
    cli.main(tiny_argv(dataset_root, tmp_path / "a", structural, "--save_every_n_steps", 5, steps=1))
    assert (tmp_path / "a" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    # A CLIP whose heads the weights do not tell: its configuration written beside it (the tiny factory and the
    # demo model do) is read; without that file, an error pointing at --model_config, which then works.
    _, ckpt = tiny
    cli.main(tiny_argv(dataset_root, tmp_path / "c", ckpt, steps=1))
    bare = tmp_path / "bare"
    shutil.copytree(Path(ckpt.image_encoder).parent, bare)
    sidecar_path(bare / Path(ckpt.image_encoder).name).unlink()
    ckpt = dataclasses.replace(ckpt, dit_shards=[str(bare / Path(p).name) for p in ckpt.dit_shards])
    with pytest.raises(SystemExit, match="--model_config"):
        cli.main(tiny_argv(dataset_root, tmp_path / "b", ckpt, steps=1))
    config = tmp_path / "configs.json"
    config.write_text(json.dumps({"image_encoder": dict(image_size=28, patch_size=14, dim=32, mlp_dim=64, num_heads=4,
                                                        num_layers=2, out_dim=16, use_layers=1)}))
    cli.main(tiny_argv(dataset_root, tmp_path / "b", ckpt, "--model_config", config, steps=1))
    assert (tmp_path / "b" / "loss.csv").read_text().splitlines()[1].startswith("1,0,")


def test_cli_training_with_streamed_dit_weights_matches(tiny, dataset_root, tmp_path):
    """--num_persistent_param_in_dit 0: every frozen DiT weight streams (through the trainer's device move), and
    the trained LoRA equals the all-resident run bit for bit."""
    _, ckpt = tiny
    saved = {}
    for name, extra in (("resident", []), ("streamed", ["--num_persistent_param_in_dit", "0"])):
        out = tmp_path / name
        args = cli.parse_args([
            "--dataset_path", str(dataset_root), "--output_path", str(out), "--dit_path", ",".join(ckpt.dit_shards),
            "--text_encoder_path", ckpt.text_encoder, "--vae_path", ckpt.vae, "--image_encoder_path",
            ckpt.image_encoder, "--num_frames", str(F), "--height", str(H), "--width", str(W), "--no-tiled",
            "--max_steps", "2", "--save_every_n_steps", "2", "--dataloader_num_workers", "0", "--precision",
            "32-true", "--seed", "0", "--use_gradient_checkpointing", *extra])
        trainer = cli.train(args, configs=CONFIGS)
        streamer = getattr(trainer.lightning_module.dit, "_vram_streamer", None)
        if name == "streamed":
            assert streamer is not None and streamer.plan.streamed_groups and streamer.stats["copies"] > 0
        else:
            assert streamer is None
        folder = out / "lightning_logs" / "version_0" / "checkpoints"
        saved[name] = torch.load(folder / "epoch=0-step=2.ckpt", weights_only=True)
    assert saved["resident"].keys() == saved["streamed"].keys()
    assert all(torch.equal(saved["resident"][k], saved["streamed"][k]) for k in saved["resident"])
    assert cli.parse_args(["--num_persistent_param_in_dit", "6e9"]).num_persistent_param_in_dit == 6e9
