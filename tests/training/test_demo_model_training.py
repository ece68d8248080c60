"""The documented training commands, run as written (a subprocess of the example script) on the shipped demo model on
CPU with no --model_config: the README's `--task train` command with $WAN pointed at the demo model, and the
data_process -> cached training pair of docs/training.md with `--dit_path demo`. Each run must write a LoRA
checkpoint that `ModelManager.load_lora_v2` merges into the demo model."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffsynth.configs import DEMO_HEIGHT, DEMO_WIDTH
from diffsynth.loading.release import DEMO_FOLDER, find_model_files, load_model_files
from training.training_helpers import write_sample

pytest.importorskip("lightning.pytorch")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[2]
# A run small enough for CPU: 5 frames at the demo model's own size, two optimizer steps.
SMALL_RUN = ["--num_frames", "5", "--height", str(DEMO_HEIGHT), "--width", str(DEMO_WIDTH), "--max_steps", "2",
             "--dataloader_num_workers", "0", "--seed", "0"]


def fenced_commands(text: str, heading: str) -> list:
    """The shell commands of the first ```bash block after `heading` (continuation lines joined, comments and
    variable assignments dropped) and its assignments, as (commands, {name: value})."""
    section = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    assignments = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    return [line for line in lines if not re.match(r"^[A-Z_]+=", line)], assignments


def run_documented(command: str, replacements: dict, extra: list, env_vars: dict) -> subprocess.CompletedProcess:
    """Run a documented `python examples/...` command through bash from the repository root, with its placeholder
    paths replaced, the test's interpreter, and `extra` flags appended."""
    for old, new in replacements.items():
        assert old in command, (old, command)
        command = command.replace(old, new)
    assert command.startswith("python ")
    command = shlex.quote(sys.executable) + command[len("python"):] + " " + " ".join(map(shlex.quote, extra))
    script = "".join(f"{name}={shlex.quote(value)}\n" for name, value in env_vars.items()) + command
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def assert_loads_into_the_demo_model(checkpoint: Path, rank: int, alpha: float) -> None:
    """`checkpoint` replaces the demo model's UniAnimate LoRA: its pose guider is the one loaded, and each DiT
    weight it targets becomes the base weight plus alpha/rank * B @ A."""
    assert checkpoint.is_file(), checkpoint
    saved = torch.load(checkpoint, weights_only=True)
    assert float(saved["network_alpha"]) == alpha
    base = load_model_files(find_model_files("demo", with_unianimate=False), torch.float32, progress=False)
    files = find_model_files("demo")
    files.add_lora(checkpoint)
    assert files.unianimate == str(checkpoint)                  # a UniAnimate LoRA: it replaces the shipped one
    trained = load_model_files(files, torch.float32, progress=False)
    assert trained.pose_source == str(checkpoint)
    guider = trained.fetch_pose_guider(torch.float32).state_dict()
    pose = {k: v for k, v in saved.items() if k.startswith(("dwpose_", "randomref_"))}
    assert pose and all(torch.equal(guider[k], v.float()) for k, v in pose.items())
    base_dit, trained_dit = base.fetch_model("wan_video_dit").state_dict(), trained.fetch_model("wan_video_dit")
    prefix, merged = "pipe.dit.", trained_dit.state_dict()
    pairs = [k for k in saved if k.endswith(".lora_A.default.weight")]
    assert pairs
    for key in pairs:
        name = key[len(prefix):-len(".lora_A.default.weight")] + ".weight"
        delta = saved[key.replace("lora_A", "lora_B")].float() @ saved[key].float() * (alpha / rank)
        assert torch.allclose(merged[name], base_dit[name] + delta, atol=1e-6), name
    assert any(not torch.equal(merged[k], base_dit[k]) for k in base_dit)      # two steps moved the LoRA off zero


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_data")
    write_sample(root / "clip", 9, size=(DEMO_WIDTH, DEMO_HEIGHT), text="a person dances")
    return root


def test_readme_training_command_trains_the_demo_model(demo_dataset, tmp_path):
    commands, assignments = fenced_commands((ROOT / "README.md").read_text(), "### Training")
    (command,) = [c for c in commands if "train_unianimate_wan.py" in c and "--task train" in c]
    assert "--model_config" not in command and "--text_encoder_path" not in command
    output = tmp_path / "models"
    done = run_documented(command, {"data/training_video_pose": str(demo_dataset), "./models": str(output)},
                          SMALL_RUN, {**assignments, "WAN": str(DEMO_FOLDER)})
    rank = int(re.search(r"--lora_rank (\d+)", command).group(1))
    alpha = float(re.search(r"--lora_alpha ([\d.]+)", command).group(1))
    checkpoint = output / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert_loads_into_the_demo_model(checkpoint, rank, alpha)
    assert (output / "loss.csv").read_text().splitlines()[2].startswith("2,")
    assert f"trained weights: {checkpoint} (animate with `python -m diffsynth animate --lora {checkpoint}`" in done.stderr
    assert "in eval mode" not in done.stderr                  # the frozen encoders are meant to be


@pytest.mark.slow        # ~30 s on 2 CPU cores; the lookup it relies on is tested above and below
def test_data_process_then_cached_training_on_the_demo_model(demo_dataset, tmp_path):
    commands, _ = fenced_commands((ROOT / "docs" / "training.md").read_text(), "Encoding the data once")
    encode, train = commands
    cache, output = tmp_path / "encoded", tmp_path / "models"
    places = {"data/training_video_pose": str(demo_dataset), "data/encoded": str(cache), "./models": str(output),
              "[--steps_per_epoch N] [--cache_epochs E]": "", " ...": ""}
    shape = SMALL_RUN[:6]
    run_documented(encode, {k: v for k, v in places.items() if k in encode}, shape, {"WAN_SHARDS": "demo"})
    assert (cache / "cache.json").is_file()
    run_documented(train, {k: v for k, v in places.items() if k in train}, ["--max_steps", "2", "--seed", "0"],
                   {"WAN_SHARDS": "demo"})
    assert_loads_into_the_demo_model(output / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", 4, 4.0)


def test_dit_path_demo_finds_the_demo_model_and_its_encoders():
    from diffsynth.loading.release import DEMO_FILES
    from diffsynth.training import cli

    args = cli.parse_args(["--dit_path", "demo"])
    assert args.dit_path.split(",") == [str(DEMO_FOLDER / name) for name in DEMO_FILES["dit"]]
    cli.resolve_encoder_paths(args)
    for name in ("text_encoder", "vae", "image_encoder"):
        assert getattr(args, f"{name}_path") == str(DEMO_FOLDER / DEMO_FILES[name])
