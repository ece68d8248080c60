"""`python -m diffsynth download` with the hub clients replaced at their API boundary (no network here)."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from diffsynth import download as dl
from diffsynth.cli import main

WAN = "Wan-AI/Wan2.1-I2V-14B-720P"
UNI = "ZheWang123/UniAnimate-DiT"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


REPOS = {
    WAN: {"diffusion_pytorch_model-00001-of-00002.safetensors": b"shard one" * 50,
          "diffusion_pytorch_model-00002-of-00002.safetensors": b"shard two" * 50,
          "models_t5_umt5-xxl-enc-bf16.pth": b"t5", "Wan2.1_VAE.pth": b"vae",
          "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth": b"clip",
          "google/umt5-xxl/tokenizer.json": b'{"tok": 1}', "config.json": b"{}",
          "examples/i2v_input.JPG": b"not wanted", "README.md": b"# not wanted"},
    UNI: {"UniAnimate-Wan2.1-14B-Lora-12000.ckpt": b"lora", "yolox_l.onnx": b"yolo", "dw-ll_ucoco_384.onnx": b"dw",
          "README.md": b"readme"},
}


class FakeHub:
    """`huggingface_hub.HfApi` and `hf_hub_download` over REPOS; `served` can replace a file's bytes in transit."""

    def __init__(self):
        self.calls, self.served = [], {}

    def HfApi(self):  # noqa: N802 - the real name
        from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

        def model_info(repo, files_metadata=False):
            assert files_metadata
            siblings = []
            for name, data in REPOS[repo].items():
                large = not name.endswith((".json", ".md"))
                lfs = BlobLfsInfo(size=len(data), sha256=hashlib.sha256(data).hexdigest(), pointer_size=130) \
                    if large else None
                siblings.append(RepoSibling(name, len(data), "0" * 40 if large else git_sha1(data), lfs))
            return SimpleNamespace(siblings=siblings)
        return SimpleNamespace(model_info=model_info)

    def hf_hub_download(self, repo, filename, *, local_dir, force_download=False):
        self.calls.append(filename)
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.served.get(filename, REPOS[repo][filename]))
        return str(path)


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.HfApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    return fake


def test_downloads_the_release_layout_then_skips_complete_files(tmp_path, hub):
    report = dl.download(tmp_path, log=lambda line: None)
    assert not report.failed and len(report.downloaded) == 10
    wan = tmp_path / "Wan2.1-I2V-14B-720P"
    assert (wan / "google/umt5-xxl/tokenizer.json").read_bytes() == b'{"tok": 1}'
    assert (wan / "diffusion_pytorch_model-00002-of-00002.safetensors").is_file()
    assert (tmp_path / "yolox_l.onnx").read_bytes() == b"yolo"
    assert not (wan / "examples").exists() and not (tmp_path / "README.md").exists()
    hub.calls.clear()
    again = dl.download(tmp_path, log=lambda line: None)
    assert hub.calls == [] and len(again.skipped) == 10 and not again.downloaded


def test_only_one_group(tmp_path, hub):
    report = dl.download(tmp_path, only=["dwpose"], log=lambda line: None)
    assert sorted(report.downloaded) == ["dw-ll_ucoco_384.onnx", "yolox_l.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(report.downloaded)


def test_a_different_file_it_did_not_write_is_kept(tmp_path, hub):
    (tmp_path / "yolox_l.onnx").write_bytes(b"my own detector")
    report = dl.download(tmp_path, only=["dwpose"], log=lambda line: None)
    assert [name for name, _ in report.failed] == ["yolox_l.onnx"] and "move it away" in report.failed[0][1]
    assert (tmp_path / "yolox_l.onnx").read_bytes() == b"my own detector"
    assert "yolox_l.onnx" not in hub.calls and report.downloaded == ["dw-ll_ucoco_384.onnx"]


def test_a_complete_file_already_there_is_verified_not_fetched(tmp_path, hub):
    (tmp_path / "yolox_l.onnx").write_bytes(b"yolo")
    report = dl.download(tmp_path, only=["dwpose"], log=lambda line: None)
    assert report.skipped == ["yolox_l.onnx"] and hub.calls == ["dw-ll_ucoco_384.onnx"]


@pytest.mark.parametrize("name", ["dw-ll_ucoco_384.onnx", "google/umt5-xxl/tokenizer.json"])
def test_a_corrupt_transfer_is_reported_and_removed(tmp_path, hub, name):
    hub.served[name] = b"xx" if name.endswith(".onnx") else b'{"tok": 2}'   # same size, other bytes
    report = dl.download(tmp_path, only=["dwpose" if name.endswith(".onnx") else "wan"], log=lambda line: None)
    failed = dict(report.failed)
    target = name if name.endswith(".onnx") else f"Wan2.1-I2V-14B-720P/{name}"
    assert list(failed) == [target] and ("SHA-256" in failed[target] or "SHA-1" in failed[target])
    assert not (tmp_path / target).exists()
    del hub.served[name]                                   # the next run fetches it again, correctly
    assert dl.download(tmp_path, only=["dwpose" if name.endswith(".onnx") else "wan"],
                       log=lambda line: None).downloaded == [target]


def test_an_unreachable_hub_is_one_line(tmp_path, hub, monkeypatch, capsys):
    def offline(repo, files_metadata=False):
        raise OSError("Failed to resolve 'huggingface.co'\n(name resolution)")
    monkeypatch.setattr(hub, "HfApi", lambda: SimpleNamespace(model_info=offline))
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", hub.HfApi)
    assert main(["download", "--only", "dwpose", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not list ZheWang123/UniAnimate-DiT on huggingface")


def test_a_missing_client_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        dl.download(tmp_path)


def test_modelscope(tmp_path, monkeypatch):
    """The modelscope client's two entry points, as modules (importing the real package takes seconds)."""
    files = REPOS[UNI]

    class HubApi:
        def get_model_files(self, model_id, recursive=True):
            assert model_id == "xiaolaowx/UniAnimate-DiT"
            return [{"Path": n, "Size": len(d), "Sha256": hashlib.sha256(d).hexdigest(), "Type": "blob"}
                    for n, d in files.items()]

    def model_file_download(model_id, file_path, *, local_dir):
        (Path(local_dir) / file_path).write_bytes(files[file_path])
        return str(Path(local_dir) / file_path)
    for name, attributes in {"modelscope": {}, "modelscope.hub": {}, "modelscope.hub.api": {"HubApi": HubApi},
                             "modelscope.hub.file_download": {"model_file_download": model_file_download}}.items():
        monkeypatch.setitem(sys.modules, name, ModuleType(name))
        for key, value in attributes.items():
            setattr(sys.modules[name], key, value)
    report = dl.download(tmp_path, source="modelscope", only=["unianimate"], log=lambda line: None)
    assert report.downloaded == ["UniAnimate-Wan2.1-14B-Lora-12000.ckpt"] and not report.failed


def test_cli(tmp_path, hub, capsys):
    assert main(["download", "--only", "dwpose", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[dwpose 1/2] dw-ll_ucoco_384.onnx" in out and "2 downloaded, 0 already complete, 0 failed" in out


@pytest.mark.parametrize("name", ["google/umt5-xxl/../../../escaped.txt", "google/umt5-xxl/..\\..\\escaped.txt",
                                  "google/umt5-xxl//tmp/absolute.txt"])
def test_a_hub_name_leading_out_of_the_folder_is_refused_by_this_tool(tmp_path, hub, monkeypatch, name):
    monkeypatch.setitem(REPOS, WAN, {**REPOS[WAN], name: b"planted"})
    target = tmp_path / "checkpoints"
    report = dl.download(target, only=["wan"], log=lambda line: None)
    refused = [why for failed, why in report.failed if name in failed]
    assert len(refused) == 1 and "refused" in refused[0] and name not in hub.calls   # never handed to the client
    assert not any(p.read_bytes() == b"planted" for p in tmp_path.rglob("*") if p.is_file())
    assert len(report.downloaded) == 7                   # the rest of the release still comes


def test_unsafe_hub_names():
    for name in ("/etc/passwd", "../x", "a/../../x", "a\\..\\x", "C:/x", "", "a//b", "./a"):
        assert dl.unsafe_name(name), name
    for name in ("google/umt5-xxl/tokenizer.json", "yolox_l.onnx", "a..b/c.txt"):
        assert dl.unsafe_name(name) is None, name
