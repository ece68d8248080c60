"""Writing tool outputs without destroying user data.

- Atomic writes: the data goes to a hidden, unique temporary file in the target's own folder, created with O_EXCL
  (so it never follows a pre-existing symlink), and is renamed over the target at the end. A rename replaces a
  symlink itself and never writes through it, and a failure deletes the temporary file: no half-written output.
- `check_output_folder` / `check_output_file`: refuse outputs that would put user data at risk, before any slow work.
- `Manifest`: a JSON file in an output folder listing the files a tool wrote there, so that `--overwrite` deletes
  exactly those and never a user file that merely looks like one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence, Union

PathLike = Union[str, os.PathLike]
MANIFEST_FORMAT = "diffsynth.manifest/1"


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new hidden file next to `path`, named `.<stem>.<random>.tmp<suffix>` (the suffix stays last so that tools
    choosing a format from the extension, like ffmpeg, still do), opened with O_EXCL."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
        try:
            return temp, os.open(temp, flags, 0o666)  # the umask applies, as for an ordinary file
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def _commit(temp: Path, path: Path, replace: bool) -> None:
    """Move `temp` to `path`. Without `replace` an existing `path` (even a dangling symlink) is refused: a hard
    link fails atomically when the name exists; file systems without hard links fall back to a check."""
    if replace:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; not replaced") from None
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists; not replaced") from None
        os.replace(temp, path)
        return
    os.unlink(temp)


@contextlib.contextmanager
def atomic_output(path: PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the same folder as `path`; on success it is renamed to `path` (replacing an
    existing file, or a symlink itself, unless `replace=False`, which raises FileExistsError), on any exception it
    is deleted. The temporary file exists (empty) when the body starts; write to it by name."""
    path = Path(path)
    if not replace and os.path.lexists(path):
        raise FileExistsError(f"{path} exists; not replaced")
    temp, fd = _create_temp(path)
    os.close(fd)
    try:
        yield temp
        _commit(temp, path, replace)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes, *, replace: bool = True) -> None:
    """Write `data` to `path` atomically (see `atomic_output`)."""
    path = Path(path)
    if not replace and os.path.lexists(path):
        raise FileExistsError(f"{path} exists; not replaced")
    temp, fd = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        _commit(temp, path, replace)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def atomic_write_text(path: PathLike, text: str, *, replace: bool = True, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (see `atomic_output`)."""
    atomic_write_bytes(path, text.encode(encoding), replace=replace)


# ---------------------------------------------------------------------------------------------------------------
# Checks before writing


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(path: PathLike, *, inputs: Iterable[PathLike] = ()) -> Path:
    """Refuse an output folder that a tool writing (and, with --overwrite, deleting) there could damage.

    Expands a leading `~`; compares resolved real paths. Raises NotADirectoryError when `path` is an existing
    file, and ValueError for `/`, the home folder, the current folder, and any folder that equals or contains
    one of `inputs` (the source video or image folder, the reference image, ...). A folder inside an input folder
    is allowed. Changes nothing; returns the expanded (not resolved) path.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output folder {path} exists and is not a folder")
    real = _real(path)
    if real == Path(real.anchor):
        raise ValueError(f"refusing output folder {path}: it is the file system root")
    if real == _real(Path.home()):
        raise ValueError(f"refusing output folder {path}: it is your home folder; choose a folder of its own")
    if real == _real(Path.cwd()):
        raise ValueError(f"refusing output folder {path}: it is the current folder; choose a folder of its own")
    for source in inputs:
        if _is_within(_real(source), real):
            what = "is" if _real(source) == real else "contains"
            raise ValueError(f"refusing output folder {path}: it {what} the input {source}; choose another folder")
    return path


def check_output_file(path: PathLike, *, overwrite: bool = False, inputs: Iterable[PathLike] = (),
                      flag: str = "overwrite=True") -> Path:
    """Refuse an output file path that cannot or must not be written, before any slow work.

    Expands a leading `~`. Raises IsADirectoryError for a folder, NotADirectoryError when a parent is a file,
    PermissionError when the nearest existing parent is not writable, FileExistsError for an existing file (or
    symlink) unless `overwrite` (the message names `flag`), and ValueError when it is one of `inputs`.
    Returns the expanded path.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: folder {parent} is not writable")
    for source in inputs:
        if _real(source) == _real(path):
            raise ValueError(f"refusing to write {path}: it is the input {source}")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass {flag} to replace it")
    return path


def make_folder(path: PathLike) -> Path:
    """Create a folder a tool writes into (and its parents); refuse one that is a symlink or a file, so that
    nothing is written through a link planted in an output folder."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; refusing to write through it")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Run manifest


def sha256_of(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp[^/]*$")


def is_temporary_name(name: str) -> bool:
    """Whether `name` has the form of an atomic write's temporary file (`.<stem>.<12 hex>.tmp<suffix>`): what a
    write killed before its rename leaves behind."""
    return _TEMP_NAME.match(name) is not None


def _clean_name(name) -> str | None:
    """A manifest entry as a normalised relative POSIX path, or None if it is not one (absolute, `..`, ...)."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None
    pure = PurePosixPath(name)
    if pure.is_absolute() or any(part in ("..", ".") for part in pure.parts) or not pure.parts:
        return None
    return pure.as_posix()


class Manifest:
    """The files a tool wrote in `folder`, kept in the JSON file `folder/name` (e.g. `.run_align_pose.json`).

    Entries are relative POSIX paths (`0000.jpg`, `frames/000000.jpg`). Names are listed *before* their files are
    written (`reserve`), so after a crash the manifest still covers everything written. `remove_listed` deletes
    exactly the listed entries and nothing else: entries with `..` or absolute paths are ignored, a listed symlink
    is unlinked as a link (its target untouched), and nothing below a symlinked folder is touched.
    """

    def __init__(self, folder: PathLike, name: str, files: Sequence[str] = ()):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.files: list[str] = []
        self._listed: set[str] = set()
        self._add(files)
        # What the listed files were made from (e.g. input hashes and settings), for tools that reuse a finished
        # folder; set it after the files are complete and `save()`. Cleared by `remove_listed`.
        self.inputs: dict | None = None
        # SHA-256 of listed files as the tool wrote them (`record_hashes`), so that readers can tell an edited,
        # damaged or swapped file from the tool's own (`changed`). Cleared by `remove_listed`.
        self.sha256: dict[str, str] = {}

    @classmethod
    def load(cls, folder: PathLike, name: str) -> "Manifest":
        """The manifest of `folder`, empty when there is none. A manifest that is a symlink, a folder or not valid
        JSON raises ValueError (rather than guessing which files are the tool's)."""
        path = Path(folder) / name
        if not os.path.lexists(path):
            return cls(folder, name)
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"run manifest {path} is not a regular file; move it away")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            files = document["files"]
            if not isinstance(files, list):
                raise TypeError("'files' is not a list")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"run manifest {path} is damaged ({error}); move it and the tool's files away") from None
        manifest = cls(folder, name, files)
        inputs = document.get("inputs")
        manifest.inputs = inputs if isinstance(inputs, dict) else None
        hashes = document.get("sha256")
        if isinstance(hashes, dict):
            manifest.sha256 = {_clean_name(k): v for k, v in hashes.items()
                               if _clean_name(k) in manifest._listed and isinstance(v, str)}
        return manifest

    def __contains__(self, name: str) -> bool:
        return _clean_name(name) in self._listed

    def _add(self, names: Iterable[str]) -> int:
        added = 0
        for name in names:
            clean = _clean_name(name)
            if clean is not None and clean not in self._listed and clean != self.path.name:
                self.files.append(clean)
                self._listed.add(clean)
                added += 1
        return added

    def conflicts(self, names: Iterable[str]) -> list[str]:
        """Those of `names` that exist in the folder (as anything, a dangling symlink included) but are not listed:
        user files a run must not replace."""
        return [name for name in names if name not in self and os.path.lexists(self.folder / name)]

    def refuse_conflicts(self, names: Iterable[str]) -> None:
        """FileExistsError, naming them, if any of `names` exists unlisted (see `conflicts`)."""
        conflicts = self.conflicts(names)
        if conflicts:
            shown = ", ".join(conflicts[:3]) + (f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else "")
            raise FileExistsError(
                f"{self.folder} already holds {shown}, which {self.path.name} does not list as written by this tool; "
                f"move {'them' if len(conflicts) > 1 else 'it'} away or choose another output folder")

    def reserve(self, names: Sequence[str]) -> None:
        """List `names` before writing them (saved at once); refuses first if any exists unlisted."""
        self.refuse_conflicts(names)
        if self._add(names):
            self.save()

    def finish(self, names: Sequence[str]) -> None:
        """Replace the list by exactly `names` (the files the run ended up with) and save."""
        self.files, self._listed = [], set()
        self._add(names)
        self.sha256 = {name: digest for name, digest in self.sha256.items() if name in self._listed}
        self.save()

    def record_hashes(self, names: Sequence[str]) -> None:
        """Remember the SHA-256 of the listed files `names` as they are now (just written by the tool), and save."""
        for name in names:
            clean = _clean_name(name)
            if clean not in self._listed:
                raise ValueError(f"{name} is not listed in {self.path}; list it before recording its hash")
            self.sha256[clean] = sha256_of(self.folder / clean)
        self.save()

    def changed(self, names: Sequence[str]) -> list[str]:
        """Those of `names` that differ from the file the tool wrote: missing, replaced by a symlink or something
        else, or with another SHA-256 than `record_hashes` recorded (a name without a recorded hash counts as
        changed: nothing vouches for it)."""
        changed = []
        for name in names:
            clean = _clean_name(name)
            path = self.folder / clean if clean else None
            if path is None or clean not in self.sha256 or path.is_symlink() or not path.is_file() or \
                    sha256_of(path) != self.sha256[clean]:
                changed.append(name)
        return changed

    def save(self) -> None:
        """Write the manifest atomically."""
        document = {"format": MANIFEST_FORMAT, "note": "files written by this tool; --overwrite deletes exactly these",
                    "files": self.files}
        if self.inputs is not None:
            document["inputs"] = self.inputs
        if self.sha256:
            document["sha256"] = self.sha256
        atomic_write_text(self.path, json.dumps(document, indent=0) + "\n")

    def _folder(self, parts: Sequence[str]) -> Path | None:
        """`folder/parts...` when each step is a real folder (not a symlink), else None."""
        current = self.folder
        for part in parts:
            current = current / part
            if current.is_symlink() or not current.is_dir():
                return None
        return current

    def _entry(self, name: str) -> Path | None:
        """`folder/name`, or None when a folder on the way is a symlink or not a folder."""
        *parents, last = PurePosixPath(name).parts
        folder = self._folder(parents)
        return None if folder is None else folder / last

    def remove_listed(self) -> list[str]:
        """Delete the listed files (symlinks as links; folders never), then the sub-folders that left empty, then
        the manifest itself. Returns the names deleted."""
        removed = []
        for name in self.files:
            entry = self._entry(name)
            if entry is not None and (entry.is_symlink() or entry.is_file()):
                entry.unlink()
                removed.append(name)
        parents = {parent for name in self.files for parent in PurePosixPath(name).parents} - {PurePosixPath(".")}
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            folder = self._folder(parent.parts)
            if folder is not None and not any(folder.iterdir()):
                folder.rmdir()
        self.files, self._listed = [], set()
        self.inputs = None
        self.sha256 = {}
        if self.path.is_symlink() or self.path.is_file():
            self.path.unlink()
        return removed


__all__ = ["Manifest", "sha256_of", "is_temporary_name",
           "atomic_output", "atomic_write_bytes", "atomic_write_text", "check_output_file",
           "check_output_folder", "make_folder"]
