"""safe_write: atomic writes that never follow symlinks, output folder checks, and the run manifest."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from diffsynth.data import safe_write
from diffsynth.data.safe_write import (
    Manifest, atomic_output, atomic_write_bytes, atomic_write_text, check_output_file, check_output_folder,
    make_folder,
)
from diffsynth.pose.draw import write_image


@pytest.fixture
def outside(tmp_path):
    """A user file outside the output folder, which symlinks inside it point to."""
    path = tmp_path / "outside.jpg"
    path.write_bytes(b"precious")
    return path


def _out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    return out


def _hidden_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]
    with pytest.raises(FileExistsError, match="a.txt exists"):
        atomic_write_bytes(path, b"three", replace=False)
    assert path.read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]


def test_new_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


@pytest.mark.parametrize("writer", ["bytes", "output", "write_image"])
def test_symlinked_output_file_is_replaced_not_written_through(tmp_path, outside, writer):
    out = _out(tmp_path)
    link = out / "0001.jpg"
    link.symlink_to(outside)
    if writer == "bytes":
        atomic_write_bytes(link, b"new")
    elif writer == "output":
        with atomic_output(link) as temp:
            temp.write_bytes(b"new")
    else:
        write_image(link, np.zeros((8, 8, 3), np.uint8))
    assert outside.read_bytes() == b"precious"
    assert not link.is_symlink() and link.is_file() and link.read_bytes() != b"precious"
    assert _hidden_files(out) == []


def test_refusing_to_replace_also_covers_a_dangling_symlink(tmp_path):
    out = _out(tmp_path)
    (out / "clip.mp4").symlink_to(tmp_path / "nowhere.mp4")
    with pytest.raises(FileExistsError):
        atomic_write_bytes(out / "clip.mp4", b"x", replace=False)
    with pytest.raises(FileExistsError):
        with atomic_output(out / "clip.mp4", replace=False):
            pass
    assert not (tmp_path / "nowhere.mp4").exists() and (out / "clip.mp4").is_symlink()


@pytest.mark.parametrize("hard_links", [True, False])
def test_refusing_to_replace_holds_for_a_file_that_appears_while_writing(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # e.g. some network or FAT file systems: the commit falls back to a check
        def no_link(*args, **kwargs):
            raise PermissionError("hard links not supported")

        monkeypatch.setattr(safe_write.os, "link", no_link)
        atomic_write_bytes(tmp_path / "new.txt", b"new", replace=False)
        assert (tmp_path / "new.txt").read_bytes() == b"new" and os.listdir(tmp_path) == ["new.txt"]
    out = _out(tmp_path)
    with pytest.raises(FileExistsError, match="clip.mp4 exists"):
        with atomic_output(out / "clip.mp4", replace=False) as temp:
            temp.write_bytes(b"ours")
            (out / "clip.mp4").write_bytes(b"someone else's")  # created after the up-front check
    assert os.listdir(out) == ["clip.mp4"] and (out / "clip.mp4").read_bytes() == b"someone else's"


def test_temporary_file_is_hidden_unique_in_the_same_folder_and_keeps_the_suffix(tmp_path):
    out = _out(tmp_path)
    with atomic_output(out / "clip.mp4") as first, atomic_output(out / "clip.mp4") as second:
        assert first.parent == second.parent == out and first != second
        assert first.name.startswith(".clip.") and first.name.endswith(".tmp.mp4")
        assert first.is_file() and first.stat().st_size == 0
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert (out / "clip.mp4").read_bytes() == b"1" and _hidden_files(out) == []


def test_temporary_name_never_follows_a_planted_symlink(tmp_path, outside, monkeypatch):
    out = _out(tmp_path)
    tokens = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(safe_write.secrets, "token_hex", lambda n: next(tokens))
    planted = out / ".0001.aaaa.tmp.jpg"  # exactly the first name the writer will try
    planted.symlink_to(outside)
    atomic_write_bytes(out / "0001.jpg", b"new")
    assert outside.read_bytes() == b"precious" and planted.is_symlink()
    assert (out / "0001.jpg").read_bytes() == b"new"


def test_failure_leaves_the_target_and_no_temporary_file(tmp_path):
    out = _out(tmp_path)
    (out / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(out / "a.txt") as temp:
            temp.write_text("half")
            raise RuntimeError("crash mid-write")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(out / "b.txt") as temp:
            raise KeyboardInterrupt
    assert sorted(os.listdir(out)) == ["a.txt"] and (out / "a.txt").read_text() == "old"


def test_write_image_leaves_nothing_when_encoding_fails(tmp_path):
    with pytest.raises(Exception):
        write_image(tmp_path / "bad.jpg", np.zeros((0, 0, 3), np.uint8))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# Output folder checks


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_root_home_and_current_folder_are_refused(tmp_path, home, monkeypatch):
    with pytest.raises(ValueError, match="root"):
        check_output_folder("/")
    with pytest.raises(ValueError, match="home folder"):
        check_output_folder("~")
    with pytest.raises(ValueError, match="home folder"):
        check_output_folder(str(home) + "/")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match="current folder"):
        check_output_folder(".")
    with pytest.raises(ValueError, match=f"{tmp_path / 'work'}.*current folder"):
        check_output_folder(work)
    assert check_output_folder("sub") == Path("sub")  # a folder of its own


def test_tilde_is_expanded(home):
    assert check_output_folder("~/poses") == home / "poses"
    assert check_output_file("~/clip.mp4") == home / "clip.mp4"


def test_output_equal_to_or_containing_an_input_is_refused(tmp_path):
    source = tmp_path / "data" / "frames"
    source.mkdir(parents=True)
    reference = tmp_path / "data" / "ref.png"
    reference.write_bytes(b"png")
    inputs = (reference, source)
    with pytest.raises(ValueError, match=f"{source}: it is the input"):
        check_output_folder(source, inputs=inputs)
    with pytest.raises(ValueError, match="contains the input"):
        check_output_folder(tmp_path / "data", inputs=inputs)
    with pytest.raises(ValueError, match="contains the input"):
        check_output_folder(tmp_path, inputs=(reference,))
    (tmp_path / "alias").symlink_to(source)  # compared as real paths
    with pytest.raises(ValueError, match="is the input"):
        check_output_folder(tmp_path / "alias", inputs=inputs)
    assert check_output_folder(source / "poses", inputs=inputs) == source / "poses"  # inside an input: fine
    assert check_output_folder(tmp_path / "data2", inputs=inputs) == tmp_path / "data2"  # a mere name prefix


def test_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        check_output_folder(tmp_path / "file")


def test_check_output_file(tmp_path, outside):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(NotADirectoryError, match=f"{outside} is not a folder"):
        check_output_file(outside / "sub" / "clip.mp4")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        check_output_file(outside, flag="--overwrite")
    with pytest.raises(ValueError, match="is the input"):
        check_output_file(outside, overwrite=True, inputs=(outside,))
    assert check_output_file(outside, overwrite=True) == outside
    assert check_output_file(tmp_path / "new" / "deeper" / "clip.mp4") == tmp_path / "new" / "deeper" / "clip.mp4"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_check_output_file_refuses_an_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            check_output_file(locked / "clip.mp4")
    finally:
        locked.chmod(0o700)


def test_make_folder_refuses_a_symlink(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "frames").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="symbolic link"):
        make_folder(tmp_path / "frames")
    assert make_folder(tmp_path / "a" / "b").is_dir()


# ---------------------------------------------------------------------------------------------------------------
# Manifest


def test_remove_listed_deletes_exactly_the_listed_files(tmp_path):
    out = _out(tmp_path)
    manifest = Manifest(out, ".tool.json")
    manifest.reserve(["0000.jpg", "pose.jpg", "frames/000000.jpg"])
    for name in ("0000.jpg", "pose.jpg", "2023.jpg", "0001.jpg", "poses.json", "notes.txt"):
        (out / name).write_text("x")
    (out / "frames").mkdir()
    (out / "frames" / "000000.jpg").write_text("x")
    loaded = Manifest.load(out, ".tool.json")
    assert loaded.files == ["0000.jpg", "pose.jpg", "frames/000000.jpg"]
    assert sorted(loaded.remove_listed()) == ["0000.jpg", "frames/000000.jpg", "pose.jpg"]
    # Digit-named and tool-like files that no manifest lists survive; the emptied sub-folder and the manifest go.
    assert sorted(os.listdir(out)) == ["0001.jpg", "2023.jpg", "notes.txt", "poses.json"]


def test_remove_listed_ignores_escaping_entries_and_unlinks_symlinks_as_links(tmp_path, outside):
    out = _out(tmp_path)
    (out / "0000.jpg").symlink_to(outside)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "000000.jpg").write_text("mine")
    (out / "frames").symlink_to(elsewhere)
    (out / "sub").mkdir()
    entries = ["0000.jpg", "../outside.jpg", str(outside), "frames/000000.jpg", "sub", "./x/../../outside.jpg"]
    (out / ".tool.json").write_text(json.dumps({"files": entries}))
    manifest = Manifest.load(out, ".tool.json")
    assert manifest.files == ["0000.jpg", "frames/000000.jpg", "sub"]
    manifest.remove_listed()
    assert outside.read_bytes() == b"precious"  # neither through the link nor by its `..`/absolute entries
    assert (elsewhere / "000000.jpg").read_text() == "mine"  # nothing below a symlinked folder
    assert sorted(os.listdir(out)) == ["frames", "sub"]  # the link went; folders are never deleted as entries


def test_reserve_refuses_unlisted_files_and_does_not_list_them(tmp_path):
    out = _out(tmp_path)
    (out / "pose.jpg").write_text("user")
    (out / "0002.jpg").symlink_to(tmp_path / "dangling")
    manifest = Manifest(out, ".tool.json")
    with pytest.raises(FileExistsError, match=r"pose\.jpg, 0002\.jpg.*move them away"):
        manifest.reserve(["pose.jpg", "0001.jpg", "0002.jpg"])
    assert manifest.files == [] and not (out / ".tool.json").exists()
    manifest.remove_listed()
    assert (out / "pose.jpg").read_text() == "user"


def test_a_crash_after_reserving_still_lets_the_next_run_clean_up(tmp_path):
    out = _out(tmp_path)
    manifest = Manifest(out, ".tool.json")
    manifest.reserve(["0000.jpg", "0001.jpg", "0002.jpg"])
    (out / "0000.jpg").write_text("written before the crash")  # 0001 and 0002 never were
    (out / "notes.txt").write_text("user")
    assert json.loads((out / ".tool.json").read_text())["files"] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    assert Manifest.load(out, ".tool.json").remove_listed() == ["0000.jpg"]
    assert os.listdir(out) == ["notes.txt"]


def test_finish_keeps_exactly_the_final_names(tmp_path):
    out = _out(tmp_path)
    manifest = Manifest(out, ".tool.json")
    manifest.reserve(["a", "b", "c"])
    manifest.finish(["a", "d"])
    assert Manifest.load(out, ".tool.json").files == ["a", "d"]


@pytest.mark.parametrize("content", ["{not json", '{"files": "0000.jpg"}', "[]", "symlink"])
def test_damaged_manifest_is_an_error_not_a_guess(tmp_path, content):
    out = _out(tmp_path)
    if content == "symlink":
        (tmp_path / "other.json").write_text('{"files": ["0000.jpg"]}')
        (out / ".tool.json").symlink_to(tmp_path / "other.json")
    else:
        (out / ".tool.json").write_text(content)
    with pytest.raises(ValueError, match=r"\.tool\.json"):
        Manifest.load(out, ".tool.json")


def test_manifest_inputs_survive_a_reload_and_go_with_the_listed_files(tmp_path):
    from diffsynth.data.safe_write import Manifest

    manifest = Manifest(tmp_path, ".m.json", ["a.jpg"])
    (tmp_path / "a.jpg").write_bytes(b"a")
    manifest.inputs = {"reference_sha256": "0" * 64}
    manifest.save()
    loaded = Manifest.load(tmp_path, ".m.json")
    assert loaded.inputs == {"reference_sha256": "0" * 64} and loaded.files == ["a.jpg"]
    loaded.remove_listed()
    assert loaded.inputs is None and not (tmp_path / "a.jpg").exists()
