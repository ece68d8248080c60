"""`--task data_process`: every item encoded once into a cache folder, and training from it without the T5, VAE
and CLIP: same loss for the same sample, crop, frames, noise and timestep; same weights after a few steps."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import default_collate

from training.training_helpers import save_structural_checkpoints, tiny_argv, write_sample

pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("peft")

from diffsynth.training import cli, encoders as encoders_lib, module as module_lib  # noqa: E402
from diffsynth.training.cache import MANIFEST, CachedDataset, _read_metadata  # noqa: E402
from diffsynth.training.dataset import UniAnimateDataset  # noqa: E402

FRAMES, SIZE = 5, 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_sample(root / "data" / "a", 12, text="a girl waves")
    write_sample(root / "data" / "b", 7)
    return root, save_structural_checkpoints(root / "models")


def argv(setup, output, *extra, steps=None):
    root, ckpt = setup
    return tiny_argv(root / "data", output, ckpt, "--steps_per_epoch", 3, *extra, frames=FRAMES, size=SIZE,
                     steps=steps)


@pytest.fixture(scope="module")
def cache(setup, tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoded")
    cli.main(argv(setup, folder, "--task", "data_process", "--cached_dataset_path", folder, "--cache_epochs", 2))
    return folder


def no_encoders(monkeypatch):
    """Make loading T5, the VAE or CLIP an error."""
    def refuse(*args, **kwargs):
        raise AssertionError("an encoder was loaded")
    for name in ("load_wan_text_encoder", "load_wan_vae", "load_wan_image_encoder"):
        monkeypatch.setattr(encoders_lib, name, refuse)


def test_data_process_writes_each_item_once(setup, cache):
    root, _ = setup
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["epochs"] == 2 and manifest["items_per_epoch"] == 3
    files = sorted(p.name for p in cache.glob("*.safetensors"))
    assert files == [f"e00{e}-i00000{i}.safetensors" for e in range(2) for i in range(3)]
    dataset = UniAnimateDataset(root / "data", num_frames=FRAMES, height=SIZE, width=SIZE, samples_per_epoch=3, seed=0)
    cached = CachedDataset(cache)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(3):
            item, stored = dataset[index], cached[index]
            meta = _read_metadata(cached.file(index))
            # the draw of the seeded dataset is recorded: the same clip, reference frame and crop
            assert json.loads(meta["frame_indices"]) == item["frame_indices"].tolist()
            assert json.loads(meta["crop_box"]) == item["crop_box"].tolist()
            assert int(meta["ref_index"]) == int(item["ref_index"]) and stored["text"] == item["text"]
            assert json.loads(meta["settings"])["num_frames"] == FRAMES and stored["path"] == item["path"]
            # the pose inputs of the trainable pose guider are cached exactly
            assert stored["dwpose_data"].dtype == torch.uint8 and torch.equal(stored["dwpose_data"].float(),
                                                                               item["dwpose_data"])
            assert torch.equal(stored["random_ref_dwpose"], item["random_ref_dwpose"])
            assert stored["latents"].shape == (16, 2, SIZE // 8, SIZE // 8) and stored["y"].shape[0] == 20
            assert stored["context"].shape[0] == 512 and stored["clip_feature"].shape == (5, 80)

    # a second run keeps the finished files; other settings in the same folder are refused
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}
    cli.main(argv(setup, cache, "--task", "data_process", "--cached_dataset_path", cache, "--cache_epochs", 2))
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")} == stamps
    with pytest.raises(SystemExit, match=r"other settings or from other data: settings: seed \(0 -> 1\)\."):
        cli.main(argv(setup, cache, "--task", "data_process", "--cached_dataset_path", cache, "--seed", 1))


def test_cached_loss_equals_end_to_end(setup, cache, monkeypatch):
    root, ckpt = setup
    common = dict(torch_dtype=torch.float32, tiled=False, lora_rank=4, lora_alpha=8.0, pose_dropout=0.0,
                  reference_dropout=0.0)
    end_to_end = module_lib.UniAnimateTrainingModule(ckpt.dit_shards, ckpt.text_encoder, ckpt.vae, ckpt.image_encoder,
                                                     **common)
    with torch.no_grad():                       # a LoRA that takes part in the forward
        for name, p in end_to_end.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    no_encoders(monkeypatch)
    cached_module = module_lib.UniAnimateTrainingModule(ckpt.dit_shards, **common)
    assert cached_module.preprocessors is None and not cached_module.has_encoders
    assert not any(name.startswith("preprocessors") for name in cached_module.state_dict())
    cached_module.load_state_dict(end_to_end.trainable_state_dict(), strict=False)

    dataset = UniAnimateDataset(root / "data", num_frames=FRAMES, height=SIZE, width=SIZE, samples_per_epoch=3, seed=0)
    cached = CachedDataset(cache)
    for epoch, index in ((0, 1), (1, 2)):
        dataset.set_epoch(epoch)
        cached.set_epoch(epoch)
        batch, cached_batch = default_collate([dataset[index]]), default_collate([cached[index]])
        noise = torch.randn(1, 16, 2, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(epoch))
        for timestep_id in (30, 700):
            expected = end_to_end.compute_loss(batch, noise=noise, timestep_id=timestep_id)
            got = cached_module.compute_loss(cached_batch, noise=noise, timestep_id=timestep_id)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(module_lib.TrainingError, match="no encoders"):
        cached_module.compute_loss(batch)


def test_training_from_the_cache_matches_end_to_end(setup, cache, tmp_path, monkeypatch):
    _, ckpt = setup
    dropout = ("--pose_dropout", 0.5, "--reference_dropout", 0.5, "--learning_rate", 1e-3)
    end_to_end = cli.train(cli.parse_args(argv(setup, tmp_path / "e2e", *dropout, steps=3)))
    expected = end_to_end.lightning_module.trainable_state_dict()
    no_encoders(monkeypatch)
    args = cli.parse_args(argv(setup, tmp_path / "cached", "--cached_dataset_path", cache, *dropout, steps=3)
                          + ["--dataset_path", ""])
    cached = cli.train(args)
    assert cached.lightning_module.preprocessors is None and cached.global_step == 3
    got = cached.lightning_module.trainable_state_dict()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
