"""Training never trains on NaN and never deletes its last good state; user errors (bad data, a bad cache, a resume
with changed settings, DeepSpeed without CUDA) stop in one line, before any model loads (issue 21 section 3,
issue 23 training items)."""
from __future__ import annotations

import csv
import json
import logging
import re
import shutil

import pytest
import torch

from training.training_helpers import _jpeg, save_structural_checkpoints, tiny_argv, write_sample

pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("peft")

from lightning.pytorch.callbacks import Callback  # noqa: E402

from diffsynth.training import cli  # noqa: E402
from diffsynth.training.cache import CACHE_FORMAT, CachedDataset, CacheError  # noqa: E402
from diffsynth.training.dataset import SampleError, UniAnimateDataset  # noqa: E402
from diffsynth.training.module import UniAnimateTrainingModule  # noqa: E402
from diffsynth.training.resume import NonFiniteError, find_nonfinite, find_resume_checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    for name, count, shade in (("a", 6, 0), ("b", 4, 2), ("c", 5, 4)):       # 3 items per epoch
        write_sample(root / "data" / name, count, shade=shade)
    return root, save_structural_checkpoints(root / "models")


def argv(setup, output, *extra, data=None, steps=3):
    root, ckpt = setup
    return tiny_argv(data or root / "data", output, ckpt, "--save_every_n_steps", 1, "--learning_rate", 1e-3,
                     *extra, frames=1, size=16, steps=steps)


def no_models(monkeypatch):
    """Make building the module (loading the DiT and encoders) an error: what is refused must be refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(cli, "build_module", refuse)


def one_line_exit(argv_list) -> str:
    """cli.main's error: a one-line message and a non-zero exit code."""
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in argv_list])
    message = info.value.code                                            # a string: exit status 1
    assert isinstance(message, str), message
    assert "\n" not in message and "Traceback" not in message, message
    return message


def checkpoint_files(output):
    return sorted(p.name for p in (output / "lightning_logs").rglob("*.ckpt"))


def assert_all_finite(output):
    """The weights (and optimizer state) of every checkpoint are finite (Lightning's own callback state holds an
    infinite `kth_value` by design)."""
    for path in (output / "lightning_logs").rglob("*.ckpt"):
        state = torch.load(path, weights_only=True)
        if "state_dict" in state:
            state = {"state_dict": state["state_dict"], "optimizer_states": state["optimizer_states"]}
        assert not find_nonfinite(state), path


# ------------------------------------------------------------------------------------------------ NaN / Inf steps
def poison_loss_at(monkeypatch, step, how):
    compute_loss = UniAnimateTrainingModule.compute_loss

    class InfGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    def poisoned(self, batch, *args, **kwargs):
        loss = compute_loss(self, batch, *args, **kwargs)
        if self.global_step == step:
            return loss * float("nan") if how == "loss" else InfGradient.apply(loss)
        return loss
    monkeypatch.setattr(UniAnimateTrainingModule, "compute_loss", poisoned)


@pytest.mark.parametrize("how,message", [("loss", "step 3: the loss is nan"),
                                         ("gradient", "step 3: .* gradients hold NaN/Inf .*weights were not updated")])
def test_a_nonfinite_step_stops_the_run_and_writes_no_checkpoint(setup, tmp_path, monkeypatch, how, message):
    output = tmp_path / "run"
    poison_loss_at(monkeypatch, 2, how)                                    # the third optimizer step
    error = one_line_exit(argv(setup, output, steps=5))
    assert error.startswith("error: ") and re.search(message, error), error
    # steps 1 and 2 were saved (finite); nothing of step 3; the resumable ones of steps 1-2 kept
    assert checkpoint_files(output) == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt",
                                        "resume-epoch=0-step=1.ckpt", "resume-epoch=0-step=2.ckpt"]
    assert_all_finite(output)
    with open(output / "loss.csv", newline="") as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1", "2"]


def test_a_checkpoint_of_nonfinite_weights_is_never_written(setup, tmp_path):
    output = tmp_path / "run"
    trainer = cli.train(cli.parse_args(argv(setup, output, "--keep_resume_checkpoints", 1, steps=2)))
    module = trainer.lightning_module
    resume_callback = next(c for c in trainer.callbacks if type(c).__name__ == "ResumeCheckpoint")
    before = {p: p.read_bytes() for p in (output / "lightning_logs").rglob("*.ckpt")}
    good = find_resume_checkpoints(output)[-1]
    assert good.name == "resume-epoch=0-step=2.ckpt" and len(find_resume_checkpoints(output)) == 1
    with torch.no_grad():
        next(p for n, p in module.named_parameters() if "lora_A" in n)[0, 0] = float("nan")
    # the resumable checkpoint of the same step would replace the good one, and the rotation delete older ones
    with pytest.raises(NonFiniteError, match=f"weights hold NaN/Inf .*The last good one is {good}"):
        resume_callback.save(trainer, module)
    with pytest.raises(NonFiniteError, match="no checkpoint written"):
        trainer.save_checkpoint(output / "release.ckpt")               # the release format (ModelCheckpoint's)
    assert not (output / "release.ckpt").exists()
    assert {p: p.read_bytes() for p in (output / "lightning_logs").rglob("*.ckpt")} == before
    assert not list(good.parent.glob(".*"))                             # no temporary file left either


# ------------------------------------------------------------------------------------------------ resuming
@pytest.fixture(scope="module")
def finished(setup, tmp_path_factory):
    """A 2-step run (3 items per epoch, lr 1e-3), to resume from."""
    output = tmp_path_factory.mktemp("finished")
    cli.train(cli.parse_args(argv(setup, output, steps=2)))
    return output, find_resume_checkpoints(output)[-1]


@pytest.mark.parametrize("where", ["state_dict", "optimizer_states"])
def test_a_nonfinite_resumable_checkpoint_is_refused_with_its_key(setup, finished, tmp_path, monkeypatch, where):
    _, path = finished
    checkpoint = torch.load(path, weights_only=True)
    if where == "state_dict":
        key = sorted(checkpoint["state_dict"])[3]
        checkpoint["state_dict"][key][0] = float("inf")
        expected = f"state_dict.{key}"
    else:
        checkpoint["optimizer_states"][0]["state"][1]["exp_avg"].view(-1)[0] = float("nan")
        expected = "optimizer_states.0.state.1.exp_avg"
    bad = tmp_path / "resume-epoch=0-step=2.ckpt"
    torch.save(checkpoint, bad)
    no_models(monkeypatch)
    error = one_line_exit(argv(setup, tmp_path / "run", "--resume_from_checkpoint", bad))
    assert str(bad) in error and expected in error and "NaN/Inf" in error, error


def test_resume_applies_a_changed_learning_rate(setup, finished, tmp_path, caplog):
    output = tmp_path / "run"
    shutil.copytree(finished[0], output)
    with caplog.at_level(logging.WARNING):
        trainer = cli.train(cli.parse_args(argv(setup, output, "--resume", "--learning_rate", 5e-4, steps=3)))
    assert trainer.global_step == 3
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [5e-4] * 3
    with open(output / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], float(r["lr"])) for r in rows] == [("1", 1e-3), ("2", 1e-3), ("3", 5e-4)]
    assert "--learning_rate 0.0005 is applied; the checkpoint was trained with 0.001" in caplog.text


@pytest.mark.parametrize("change,expected", [
    (("--steps_per_epoch", 4), "written for 3 items per epoch, the dataset now has 4 .*--steps_per_epoch 3"),
    (("--lora_rank", 8), "lora_rank: checkpoint 4, now 8"),
    (("--lora_alpha", 2), "lora_alpha: checkpoint 4.0, now 2.0"),
])
def test_resume_refuses_changed_settings_in_one_line_before_the_models(setup, finished, tmp_path, monkeypatch,
                                                                        change, expected):
    output = tmp_path / "run"
    shutil.copytree(finished[0], output)
    no_models(monkeypatch)
    error = one_line_exit(argv(setup, output, "--resume", *change, steps=3))
    assert re.search(expected, error), error


# ------------------------------------------------------------------------------------------------ run length, strategy
def test_max_steps_is_not_cut_short_by_the_default_epoch(setup, tmp_path, caplog):
    root, ckpt = setup
    base = tiny_argv(root / "data", tmp_path / "run", ckpt, "--save_every_n_steps", 10, frames=1, size=16)
    trainer = cli.train(cli.parse_args(base + ["--max_steps", "4"]))    # 3 items per epoch, no --max_epochs
    assert trainer.global_step == 4 and trainer.max_epochs == -1
    assert cli.resolve_max_epochs(cli.parse_args([])) == 1              # without --max_steps: one epoch (upstream)
    args = cli.parse_args(base + ["--max_steps", "10", "--max_epochs", "2"])
    with caplog.at_level(logging.INFO):
        text = cli.describe_length(args, 3)
    assert text == "training until optimizer step 6 (3 steps per epoch)"
    assert "--max_steps 10 will not be reached: --max_epochs 2 ends the run after 6 optimizer steps" in caplog.text


def test_deepspeed_without_cuda_is_refused_in_one_line(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "build_dataset", lambda args: pytest.fail("the data was read"))
    no_models(monkeypatch)
    error = one_line_exit(argv(setup, tmp_path / "run", "--training_strategy", "deepspeed_stage_2"))
    assert "deepspeed_stage_2 needs CUDA" in error and "--training_strategy auto" in error, error


def test_a_missing_model_file_is_named_before_any_model_loads(setup, tmp_path, monkeypatch):
    from diffsynth.training import module as module_lib

    monkeypatch.setattr(module_lib, "UniAnimateTrainingModule", lambda *a, **k: pytest.fail("a model was loaded"))
    root, ckpt = setup
    missing = str(tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors")
    args = argv(setup, tmp_path / "run")
    args[args.index("--dit_path") + 1] = f"{ckpt.dit_shards[0]},{missing}"
    args += ["--text_encoder_path", ckpt.text_encoder, "--vae_path", ckpt.vae,
             "--image_encoder_path", ckpt.image_encoder]
    error = one_line_exit(args)
    assert error == f"--dit_path: {missing} not found", error


# ------------------------------------------------------------------------------------------------ bad data
def test_an_empty_dataset_is_named_in_one_line_before_the_models(setup, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    no_models(monkeypatch)
    error = one_line_exit(argv(setup, tmp_path / "run", data=tmp_path / "empty"))
    assert "no training samples" in error and str(tmp_path / "empty") in error, error


def test_a_sample_without_poses_is_named_in_one_line_before_the_models(setup, tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_sample(data / "good", 4)
    bad = write_sample(data / "bad", 4)
    shutil.rmtree(bad / "poses")
    short = write_sample(data / "short", 4)
    (short / "frames" / "000002.jpg").unlink()
    no_models(monkeypatch)
    error = one_line_exit(argv(setup, tmp_path / "run", data=data))
    assert f"{bad}: no poses/ folder" in error and f"{short}: frames/000002.jpg missing" in error, error
    assert "2 of 3 training samples cannot be used" in error


def test_an_unreadable_sample_is_named_at_once_not_retried(tmp_path, monkeypatch):
    write_sample(tmp_path / "a", 4)
    bad = write_sample(tmp_path / "b", 4)
    (bad / "frames" / "000001.jpg").write_bytes(b"not a jpeg")
    dataset = UniAnimateDataset(tmp_path, num_frames=5, height=16, width=16, seed=0)
    calls = []
    load_sample = dataset.load_sample
    monkeypatch.setattr(dataset, "load_sample", lambda folder, rng: calls.append(folder) or load_sample(folder, rng))
    with pytest.raises(SampleError, match=f"training sample {bad}: .*000001.jpg"):
        dataset[1]
    assert calls == [bad]                                                 # one attempt, no other video tried


def test_an_unreadable_sample_in_a_worker_stops_the_run_in_one_line(setup, tmp_path):
    data = tmp_path / "data"
    bad = write_sample(data / "a", 4)
    for i in range(4):
        (bad / "frames" / f"{i:06d}.jpg").write_bytes(b"not a jpeg")
    error = one_line_exit(argv(setup, tmp_path / "run", "--dataloader_num_workers", 1, data=data))
    assert error.startswith(f"error: training sample {bad}: UnidentifiedImageError"), error


# ------------------------------------------------------------------------------------------------ the cache
@pytest.fixture
def cache(setup, tmp_path):
    """A fresh data_process cache (2 items) of its own copy of two samples, which the tests may damage."""
    root, _ = setup
    data = tmp_path / "data"
    for name in ("a", "b"):
        shutil.copytree(root / "data" / name, data / name)
    folder = tmp_path / "cache"
    cli.main(argv(setup, tmp_path / "out", "--task", "data_process", "--cached_dataset_path", folder, data=data))
    return data, folder


def test_a_corrupt_cache_is_named_in_one_line_before_the_models(setup, cache, tmp_path, monkeypatch):
    data, folder = cache
    train = argv(setup, tmp_path / "run", "--cached_dataset_path", folder, data=data)
    no_models(monkeypatch)
    item = folder / "e000-i000001.safetensors"
    item.write_bytes(item.read_bytes()[:-50])                           # truncated
    error = one_line_exit(train)
    assert f"{item} is not a readable cache file" in error, error
    (folder / "cache.json").write_text("{not json")
    error = one_line_exit(train)
    assert f"{folder / 'cache.json'} is unreadable" in error, error
    (folder / "cache.json").write_text(json.dumps({"format": CACHE_FORMAT, "settings": {}, "epochs": 1,
                                                   "items_per_epoch": 0, "files": [[]]}))
    error = one_line_exit(train)                                         # an empty cache
    assert f"{folder / 'cache.json'} lists no usable items" in error, error


def test_a_nonfinite_cache_item_is_refused_with_its_key_and_file(cache):
    from safetensors.torch import load_file, save_file

    from diffsynth.training.cache import _read_metadata

    _, folder = cache
    item = folder / "e000-i000000.safetensors"
    tensors, metadata = load_file(str(item)), _read_metadata(item)
    tensors["latents"].view(-1)[5] = float("nan")
    save_file(tensors, str(item), metadata=metadata)
    dataset = CachedDataset(folder)
    assert set(dataset[1]) >= {"latents", "y"}
    with pytest.raises(CacheError, match=f"{item} .*: latents holds NaN/Inf"):
        dataset[0]


def test_data_process_writes_no_nonfinite_item(setup, tmp_path, monkeypatch):
    from diffsynth.training import cache as cache_lib

    encode_item = cache_lib.encode_item

    def nan_context(*args, **kwargs):
        tensors = encode_item(*args, **kwargs)
        tensors["context"][0, 0] = float("inf")
        return tensors
    monkeypatch.setattr(cache_lib, "encode_item", nan_context)
    root, _ = setup
    error = one_line_exit(argv(setup, tmp_path / "out", "--task", "data_process", "--cached_dataset_path",
                               tmp_path / "cache"))
    assert f"the encoded item 0 of {root / 'data' / 'a'}" in error and "context holds NaN/Inf" in error, error
    assert not list((tmp_path / "cache").iterdir())


def test_a_stale_cache_is_detected_by_content(setup, cache, tmp_path, monkeypatch):
    data, folder = cache
    CachedDataset(folder)                                                # unchanged data: fine
    # The same file names, another picture in one of them.
    frame = data / "b" / "frames" / "000001.jpg"
    frame.write_bytes(_jpeg(201))
    with pytest.raises(CacheError, match=f"stale: .*source_hash of {data / 'b'}"):
        CachedDataset(folder)
    # data_process again into the same folder: the files of the changed sample are not reused
    error = one_line_exit(argv(setup, tmp_path / "out", "--task", "data_process", "--cached_dataset_path", folder,
                               data=data))
    assert "e000-i000001.safetensors was written with other settings or from other data: source_hash" in error
    # and training from it stops before the models
    no_models(monkeypatch)
    error = one_line_exit(argv(setup, tmp_path / "run", "--cached_dataset_path", folder, data=data))
    assert "is stale" in error, error
    assert json.loads((folder / "cache.json").read_text())["sources"].keys() == {str(data / "a"), str(data / "b")}
