"""`python -m diffsynth download`: fetch the release files into a checkpoints folder, in the layout the loaders
and `animate` expect (checkpoints/README.md):

    checkpoints/Wan2.1-I2V-14B-720P/…                 Wan-AI/Wan2.1-I2V-14B-720P (DiT shards, umT5 + tokenizer, VAE, CLIP)
    checkpoints/UniAnimate-Wan2.1-14B-Lora-12000.ckpt  ZheWang123/UniAnimate-DiT (ModelScope: xiaolaowx/UniAnimate-DiT)
    checkpoints/yolox_l.onnx, dw-ll_ucoco_384.onnx     the DWPose models, from the same UniAnimate-DiT repository

The hub clients (`huggingface_hub`, `modelscope`; the `download` extra) are imported only here, and they do the
transfer: they resume an interrupted file and show its progress bar. Around them this module lists each repository
with the sizes and SHA-256 the hub publishes, skips files already complete (verified once, then remembered by size
and modification time in `.diffsynth_download.json`), checks every new file, and never replaces a file it did not
download: a different file in the way is reported, not overwritten.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .data.safe_write import atomic_write_text

SOURCES = ("huggingface", "modelscope")
STAMP_FILE = ".diffsynth_download.json"
STAMP_FORMAT = "diffsynth.download/1"


class DownloadError(RuntimeError):
    """A repository could not be listed (network, unknown repository, access)."""


@dataclass(frozen=True)
class Group:
    """Release files of one repository: `patterns` (fnmatch) of its files, saved under `folder/subdir`; an exact
    name in `patterns` must be listed by the hub, those in `optional` are fetched when present."""

    repos: Dict[str, str]          # source -> repository id
    patterns: Tuple[str, ...]
    subdir: str = ""
    optional: Tuple[str, ...] = ()


_UNIANIMATE = {"huggingface": "ZheWang123/UniAnimate-DiT", "modelscope": "xiaolaowx/UniAnimate-DiT"}
GROUPS = {
    "wan": Group({"huggingface": "Wan-AI/Wan2.1-I2V-14B-720P", "modelscope": "Wan-AI/Wan2.1-I2V-14B-720P"},
                 ("diffusion_pytorch_model-*-of-*.safetensors", "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth",
                  "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "google/umt5-xxl/*"),
                 "Wan2.1-I2V-14B-720P", ("diffusion_pytorch_model.safetensors.index.json", "config.json")),
    "unianimate": Group(_UNIANIMATE, ("UniAnimate-Wan2.1-14B-Lora-12000.ckpt",)),
    "dwpose": Group(_UNIANIMATE, ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")),
}


@dataclass(frozen=True)
class RemoteFile:
    """A file as the hub lists it: its path in the repository, size, and the hashes the hub publishes (SHA-256
    of the content for large/LFS files; Hugging Face's git blob id, a SHA-1, for the others)."""

    path: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    git_sha1: Optional[str] = None


class HuggingFaceSource:
    """Hugging Face Hub through `huggingface_hub` (`HfApi.model_info(files_metadata=True)`, `hf_hub_download`)."""

    name = "huggingface"

    def __init__(self):
        try:
            import huggingface_hub  # noqa: PLC0415
        except ImportError:
            raise ImportError("downloading from Hugging Face needs the huggingface_hub package: "
                              "pip install huggingface_hub (or pip install -e .[download])") from None
        self.hub = huggingface_hub

    def list_files(self, repo: str) -> List[RemoteFile]:
        info = self.hub.HfApi().model_info(repo, files_metadata=True)
        return [RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None, None if s.lfs else s.blob_id)
                for s in info.siblings or []]

    def download(self, repo: str, path: str, folder: Path, force: bool = False) -> Path:
        return Path(self.hub.hf_hub_download(repo, path, local_dir=str(folder), force_download=force))


class ModelScopeSource:
    """ModelScope through `modelscope` (`HubApi.get_model_files`, `model_file_download`)."""

    name = "modelscope"

    def __init__(self):
        try:
            from modelscope.hub.api import HubApi  # noqa: PLC0415
            from modelscope.hub.file_download import model_file_download  # noqa: PLC0415
        except ImportError:
            raise ImportError("downloading from ModelScope needs the modelscope package: pip install modelscope "
                              "(or pip install -e .[download])") from None
        self.api, self.file_download = HubApi, model_file_download

    def list_files(self, repo: str) -> List[RemoteFile]:
        entries = self.api().get_model_files(repo, recursive=True)
        return [RemoteFile(e["Path"], e.get("Size"), e.get("Sha256") or None) for e in entries
                if e.get("Type", "blob") == "blob"]

    def download(self, repo: str, path: str, folder: Path, force: bool = False) -> Path:
        if force and (folder / path).is_file():   # only ever a file this tool downloaded (see `download`)
            (folder / path).unlink()
        return Path(self.file_download(model_id=repo, file_path=path, local_dir=str(folder)))


def make_source(name: str):
    """The hub client for `name` (one of `SOURCES`); ImportError with the install command when it is missing."""
    if name == "huggingface":
        return HuggingFaceSource()
    if name == "modelscope":
        return ModelScopeSource()
    raise ValueError(f"source must be one of {', '.join(SOURCES)}; got {name!r}")


def file_hashes(path: Path, chunk: int = 1 << 22) -> Tuple[str, str]:
    """(SHA-256 of the content, git blob SHA-1) of a file, in one read."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1()
    git.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(chunk), b""):
            sha256.update(block)
            git.update(block)
    return sha256.hexdigest(), git.hexdigest()


def verify(path: Path, remote: RemoteFile) -> Optional[str]:
    """None when the file matches what the hub published, else why not."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"size {size} bytes, the hub says {remote.size}"
    if remote.sha256 or remote.git_sha1:
        sha256, git_sha1 = file_hashes(path)
        if remote.sha256 and sha256 != remote.sha256.lower():
            return f"SHA-256 {sha256[:12]}…, the hub says {remote.sha256[:12]}…"
        if not remote.sha256 and remote.git_sha1 and git_sha1 != remote.git_sha1.lower():
            return f"git SHA-1 {git_sha1[:12]}…, the hub says {remote.git_sha1[:12]}…"
    return None


class Stamps:
    """Files this tool downloaded and verified, with the size and modification time they had then."""

    def __init__(self, folder: Path):
        self.path = folder / STAMP_FILE
        self.files: Dict[str, dict] = {}
        if self.path.is_file():
            try:
                document = json.loads(self.path.read_text(encoding="utf-8"))
                self.files = dict(document.get("files", {}))
            except (ValueError, AttributeError, TypeError):
                self.files = {}   # damaged: every file is verified again, none is deleted

    def matches(self, name: str, path: Path, remote: RemoteFile) -> bool:
        stamp, stat = self.files.get(name), path.stat()
        return bool(stamp) and stamp.get("size") == stat.st_size and stamp.get("mtime_ns") == stat.st_mtime_ns \
            and stamp.get("sha256") == remote.sha256 and (remote.size is None or remote.size == stat.st_size)

    def record(self, name: str, path: Path, remote: RemoteFile, repo: str) -> None:
        stat = path.stat()
        self.files[name] = {"repo": repo, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": remote.sha256}
        atomic_write_text(self.path, json.dumps({"format": STAMP_FORMAT, "files": self.files}, indent=1) + "\n")


@dataclass
class DownloadReport:
    """What a download run did: files fetched, files already complete, and failures (name, reason)."""

    folder: Path
    downloaded: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)

    def lines(self) -> List[str]:
        lines = [f"{len(self.downloaded)} downloaded, {len(self.skipped)} already complete, "
                 f"{len(self.failed)} failed -> {self.folder}"]
        lines += [f"  FAILED {name}: {why}" for name, why in self.failed]
        return lines


def unsafe_name(path) -> Optional[str]:
    """Why a hub file name cannot be saved inside the target folder (absolute, `..`, a backslash or a drive, an
    empty or `.` part), or None when it is a plain relative path. Checked here, not left to the hub client."""
    if not isinstance(path, str) or not path:
        return "an empty name"
    pure = PurePosixPath(path)
    if "\\" in path or "\0" in path or (len(path) > 1 and path[1] == ":"):
        return "a backslash, NUL or drive letter in it"
    if pure.is_absolute():
        return "an absolute path"
    if any(part in ("..", ".") for part in path.split("/")) or "" in path.split("/"):
        return "a '..', '.' or empty part"
    return None


def plan(remote_files: Iterable[RemoteFile], patterns: Sequence[str]) -> List[RemoteFile]:
    """The files that match any of `patterns`, in name order."""
    return sorted((f for f in remote_files if any(fnmatch.fnmatchcase(f.path, p) for p in patterns)),
                  key=lambda f: f.path)


def _size(num: Optional[int]) -> str:
    if num is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if num < 1000 or unit == "GB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1000
    return ""


def download(folder="checkpoints", source: str = "huggingface", only: Optional[Sequence[str]] = None,
             log=print) -> DownloadReport:
    """Download the `only` groups (default all of `GROUPS`) from `source` into `folder`; see the module docstring.
    Failures of single files are collected in the report; a repository that cannot be listed raises."""
    unknown = [g for g in only or () if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group {unknown[0]!r}; choose from {', '.join(GROUPS)}")
    hub = make_source(source)
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    stamps = Stamps(folder)
    report = DownloadReport(folder)
    for group_name in only or list(GROUPS):
        group = GROUPS[group_name]
        repo = group.repos[source]
        try:
            listing = hub.list_files(repo)
        except Exception as error:  # noqa: BLE001 - any client error becomes one line naming the repository
            raise DownloadError(f"could not list {repo} on {source} ({type(error).__name__}): "
                                f"{' '.join(str(error).split())}") from error
        files = plan(listing, group.patterns + group.optional)
        missing = [p for p in group.patterns if "*" not in p and not any(f.path == p for f in files)]
        for pattern in missing:
            report.failed.append((pattern, f"not listed in {repo} on {source}"))
        target_dir = folder / group.subdir if group.subdir else folder
        for remote in [f for f in files if unsafe_name(f.path)]:
            report.failed.append((remote.path, f"refused: the {repo} listing names a file with "
                                                     f"{unsafe_name(remote.path)}, which would be written outside "
                                                     f"{target_dir}"))
        files = [f for f in files if not unsafe_name(f.path)]
        for index, remote in enumerate(files, 1):
            name = str(Path(group.subdir) / remote.path) if group.subdir else remote.path
            log(f"[{group_name} {index}/{len(files)}] {name} ({_size(remote.size)})")
            try:
                if _fetch(hub, repo, remote, target_dir, name, stamps):
                    report.downloaded.append(name)
                else:
                    report.skipped.append(name)
            except Exception as error:  # noqa: BLE001 - one file's failure must not stop the others
                report.failed.append((name, " ".join(str(error).split()) or type(error).__name__))
    return report


def _fetch(hub, repo: str, remote: RemoteFile, target_dir: Path, name: str, stamps: Stamps) -> bool:
    """Make `target_dir/remote.path` complete; True when it was downloaded, False when it already was."""
    path = target_dir / remote.path
    ours = name in stamps.files
    if os.path.lexists(path):
        if not path.is_file():
            raise FileExistsError(f"{path} is in the way (not a regular file); move it away")
        if stamps.matches(name, path, remote):
            return False
        problem = verify(path, remote)
        if problem is None:
            stamps.record(name, path, remote, repo)
            return False
        if not ours:
            raise FileExistsError(f"{path} exists and differs from the hub's file ({problem}); it was not "
                                  "downloaded by this tool, so it is kept: move it away and run again")
    target_dir.mkdir(parents=True, exist_ok=True)
    written = hub.download(repo, remote.path, target_dir, force=os.path.lexists(path))
    if Path(written).resolve() != path.resolve():
        raise RuntimeError(f"the {hub.name} client wrote {written}, expected {path}")
    problem = verify(path, remote)
    if problem is not None:
        path.unlink()           # the file this call downloaded; a new run downloads it again
        raise ValueError(f"downloaded file does not match the hub ({problem}); deleted it, run again")
    stamps.record(name, path, remote, repo)
    return True


__all__ = ["download", "DownloadError", "DownloadReport", "GROUPS", "SOURCES", "RemoteFile", "Group",
           "HuggingFaceSource",
           "ModelScopeSource", "make_source", "verify", "file_hashes", "plan", "unsafe_name"]
