"""Training that survives a crash: the resumable data order, RNG states, resumable checkpoints written every N
steps, at the end and on Ctrl-C / SIGTERM, and resumed runs that end bit for bit where an uninterrupted run ends;
the loss log and the run settings."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import sys

import numpy as np
import pytest
import torch

from training.training_helpers import save_structural_checkpoints, tiny_argv, write_sample

pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("peft")

from lightning.pytorch.callbacks import Callback  # noqa: E402

from diffsynth.training import cli  # noqa: E402
from diffsynth.training.module import TrainingError  # noqa: E402
from diffsynth.training.resume import (EpochSampler, capture_rng_state, find_resume_checkpoints,  # noqa: E402
                                       restore_rng_state)

STEPS = 5                     # 3 items per epoch: epoch 0 = steps 1-3, epoch 1 = steps 4-5


# ------------------------------------------------------------------------------------------------ units
def test_epoch_sampler_is_seeded_and_resumable():
    sampler = EpochSampler(7, seed=3)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(7)) and list(EpochSampler(7, seed=3)) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0 and sorted(sampler) == list(range(7))
    sampler.commit(4)
    resumed = EpochSampler(7, seed=None)                                  # another seed: replaced by the saved one
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == sampler.epoch_indices(1)[4:] and len(resumed) == 7
    resumed.commit(7)
    end = EpochSampler(7)
    end.load_state_dict(resumed.state_dict())                             # saved after an epoch's last batch
    assert (end.epoch, end.position) == (2, 0) and list(end) == sampler.epoch_indices(2)
    with pytest.raises(ValueError, match="7 samples per epoch"):
        EpochSampler(8).load_state_dict(sampler.state_dict())
    ranks = []
    for rank in range(2):                                                 # two processes share the epoch
        part = EpochSampler(7, seed=3)
        part.set_distributed(2, rank)
        ranks.append(list(part))
    assert len(ranks[0]) == len(ranks[1]) == 4 and set(ranks[0]) | set(ranks[1]) == set(range(7))


def test_rng_state_round_trip(tmp_path):
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


# ------------------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    for name, count, shade in (("a", 12, 0), ("b", 7, 2), ("c", 9, 4)):    # 3 items per epoch: one per folder
        write_sample(root / "data" / name, count, shade=shade)
    return root, save_structural_checkpoints(root / "models")


class Interrupt(Callback):
    """Before the training step that follows optimizer step `at`: raise KeyboardInterrupt or send a signal."""

    def __init__(self, at: int, how):
        self.at, self.how = at, how

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            if self.how == "keyboard":
                raise KeyboardInterrupt
            os.kill(os.getpid(), self.how)


def run(setup, output, *extra, interrupt=None, monkeypatch=None, save_every=2):
    """A 5-step tiny run (dropout on, so the RNG matters); returns (trainer, trainable weights)."""
    root, ckpt = setup
    argv = tiny_argv(root / "data", output, ckpt, "--steps_per_epoch", 3, "--save_every_n_steps", save_every,
                     "--pose_dropout", 0.5, "--reference_dropout", 0.5, "--learning_rate", 1e-3, *extra,
                     frames=1, size=16, steps=STEPS)
    if interrupt is not None:
        build = cli.build_trainer

        def build_with_interrupt(args, stop=None):
            trainer = build(args, stop)
            trainer.callbacks.append(Interrupt(*interrupt))
            return trainer
        monkeypatch.setattr(cli, "build_trainer", build_with_interrupt)
    try:
        trainer = cli.train(cli.parse_args(argv))
    finally:
        if interrupt is not None:
            monkeypatch.setattr(cli, "build_trainer", build)
    return trainer, {k: v.clone() for k, v in trainer.lightning_module.trainable_state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def loss_rows(output):
    with open(output / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted")
    trainer, weights = run(setup, output)
    assert trainer.global_step == STEPS
    return output, weights


def test_resume_continues_exactly(setup, uninterrupted, tmp_path):
    reference, expected = uninterrupted
    output = tmp_path / "run"
    trainer, _ = run(setup, output, "--max_steps", 4, save_every=1)     # stops in the middle of epoch 1
    assert trainer.global_step == 4
    checkpoints = [p.name for p in find_resume_checkpoints(output)]
    assert checkpoints == ["resume-epoch=0-step=3.ckpt", "resume-epoch=1-step=4.ckpt"]    # every step, 2 kept
    with pytest.raises(TrainingError, match="lora_rank: checkpoint 4, now 8"):
        run(setup, output, "--resume", "--lora_rank", 8)

    # The end of training writes one too: continue from a run that ended between two periodic saves.
    other = tmp_path / "other"
    run(setup, other, "--max_steps", 4, save_every=3)
    assert [p.name for p in find_resume_checkpoints(other)] == ["resume-epoch=0-step=3.ckpt",
                                                                "resume-epoch=1-step=4.ckpt"]
    _, weights = run(setup, other, "--resume", save_every=3)
    assert_same_weights(weights, expected)

    # A resumable checkpoint is loadable with weights_only=True and holds everything needed to continue.
    path = find_resume_checkpoints(output)[-1]
    state = torch.load(path, weights_only=True)
    assert state["global_step"] == 4 and state["epoch"] == 1
    assert state["state_dict"].keys() == trainer.lightning_module.trainable_state_dict().keys()
    assert len(state["optimizer_states"]) == 1 and state["optimizer_states"][0]["state"]
    loader_state = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (loader_state["epoch"], loader_state["position"], loader_state["seed"]) == (1, 1, 0)
    rng = state["callbacks"]["ResumeCheckpoint"]["rng"][0]
    assert set(rng) >= {"torch", "numpy", "python"}
    assert state["unianimate_resume"]["lora_rank"] == 4
    # The release files next to it are unchanged: flat {name: tensor} dicts.
    release = torch.load(path.parent / "epoch=1-step=4.ckpt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in release.values()) and "network_alpha" in release

    trainer, weights = run(setup, output, "--resume")
    assert trainer.global_step == STEPS
    assert_same_weights(weights, expected)
    assert loss_rows(output) == loss_rows(reference)                     # each step once, same losses
    settings = json.loads((output / "args.json").read_text())
    assert settings["resume"] and settings["start_step"] == 4 and settings["lora_rank"] == 4
    version_dirs = sorted(p.name for p in (output / "lightning_logs").iterdir())
    assert version_dirs == ["version_0", "version_1"]                    # the resumed run writes beside the first
    assert (output / "lightning_logs" / "version_1" / "args.json").is_file()


def test_keyboard_interrupt_writes_a_resumable_checkpoint(setup, uninterrupted, tmp_path, monkeypatch):
    reference, expected = uninterrupted
    output = tmp_path / "run"
    with pytest.raises(SystemExit):                                        # Lightning exits after on_exception
        run(setup, output, interrupt=(3, "keyboard"), monkeypatch=monkeypatch)
    assert [p.name for p in find_resume_checkpoints(output)] == ["resume-epoch=0-step=2.ckpt",
                                                                 "resume-epoch=1-step=3.ckpt"]
    assert [r["step"] for r in loss_rows(output)] == ["1", "2", "3"]
    # Resuming from the older checkpoint drops the loss rows logged after it.
    trainer, weights = run(setup, output, "--resume_from_checkpoint", find_resume_checkpoints(output)[0])
    assert_same_weights(weights, expected)
    assert loss_rows(output) == loss_rows(reference)


@pytest.mark.parametrize("signum,at,name", [(signal.SIGTERM, 0, "resume-epoch=0-step=1.ckpt"),
                                            (signal.SIGINT, 2, "resume-epoch=0-step=3.ckpt")],   # end of epoch 0
                         ids=["SIGTERM", "SIGINT"])
def test_signal_stops_after_the_step_with_a_checkpoint(setup, uninterrupted, tmp_path, monkeypatch, signum, at, name):
    _, expected = uninterrupted
    output = tmp_path / "run"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    trainer, _ = run(setup, output, interrupt=(at, signum), monkeypatch=monkeypatch)
    assert trainer.stopped_by_signal == signum and trainer.global_step == at + 1   # the step in progress finishes
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers   # handlers restored
    assert find_resume_checkpoints(output)[-1].name == name
    _, weights = run(setup, output, "--resume")
    assert_same_weights(weights, expected)


class InterruptOnce(Interrupt):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.how is not None:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
            if trainer.global_step == self.at:
                self.how = None


def test_sigterm_during_gradient_accumulation_finishes_the_step_and_saves(setup, tmp_path, monkeypatch):
    """SIGTERM on the first of 3 accumulated batches: the run still ends after the optimizer step, with a
    resumable checkpoint of it (Lightning's own SIGTERM exit, mid-accumulation, would lose every step since the
    last checkpoint), and the resumed run ends where an uninterrupted one does."""
    accumulate = ("--accumulate_grad_batches", 3)
    _, expected = run(setup, tmp_path / "reference", *accumulate)
    output = tmp_path / "run"
    monkeypatch.setattr(sys.modules[__name__], "Interrupt", InterruptOnce)
    trainer, _ = run(setup, output, *accumulate, interrupt=(1, signal.SIGTERM), monkeypatch=monkeypatch,
                     save_every=100)
    assert trainer.stopped_by_signal == signal.SIGTERM and trainer.global_step == 2
    assert find_resume_checkpoints(output)[-1].name.endswith("step=2.ckpt")
    trainer, weights = run(setup, output, *accumulate, "--resume")
    assert trainer.global_step == STEPS
    assert_same_weights(weights, expected)


def test_ending_at_an_earlier_checkpoint_drops_the_later_loss_rows(setup, tmp_path):
    """Resumed at its --max_steps (nothing left to train), the run still drops the rows logged after that step."""
    output = tmp_path / "run"
    run(setup, output, "--max_steps", 4, save_every=1)
    assert [int(r["step"]) for r in loss_rows(output)] == [1, 2, 3, 4]
    earlier = find_resume_checkpoints(output)[0]
    assert earlier.name.endswith("step=3.ckpt")
    trainer, _ = run(setup, output, "--resume_from_checkpoint", earlier, "--max_steps", 3)
    assert trainer.global_step == 3
    assert [int(r["step"]) for r in loss_rows(output)] == [1, 2, 3]


def test_main_exits_with_the_signal_code(monkeypatch):
    class Stopped:
        stopped_by_signal, global_step = signal.SIGTERM, 3
    monkeypatch.setattr(cli, "train", lambda args: Stopped())
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--dit_path", "x"])
    assert exit_info.value.code == 128 + signal.SIGTERM


def test_resume_refuses_other_files(setup, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    release = next((reference / "lightning_logs").rglob("epoch=*.ckpt"))
    with pytest.raises(SystemExit, match="not a resumable checkpoint.*--pretrained_lora_path"):
        run(setup, tmp_path, "--resume_from_checkpoint", release)
    # --resume without any checkpoint yet starts from scratch (the same command starts and restarts a job)
    assert cli.find_resume_path(cli.parse_args(["--output_path", str(tmp_path / "empty"), "--resume"])) is None
