"""preftune.errors.writable_folder: the one "a folder I can write into" check behind --output-dir, recipe
output_dir, --report-to's folders and --feedback's folder. Each refusal is one line: the setting, what is
wrong (naming the file in the way), the caller's fix."""

import contextlib
import errno
import os
from pathlib import Path

import pytest

from preftune.errors import PreftuneError, writable_folder

NOT_ROOT = pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                              reason="root writes into (and looks into) folders whatever their permissions")


def test_a_missing_folder_is_created_with_its_parents(tmp_path):
    path = tmp_path / "a" / "b"
    assert writable_folder(path, "--output-dir", "pass another folder") == path
    assert path.is_dir()
    assert writable_folder(str(path), "--output-dir", "pass another folder") == path  # there already: kept


def test_a_file_at_the_path_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PreftuneError) as refused:
        writable_folder(tmp_path / "f", "--output-dir", "pass another folder")
    assert str(refused.value) == f"--output-dir: {tmp_path}/f is a file, not a folder; pass another folder"


def test_a_file_above_the_path_is_named_with_the_path_it_blocks(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PreftuneError) as refused:
        writable_folder(tmp_path / "f" / "a" / "b", "--report-to trackio", "change TRACKIO_DIR")
    assert str(refused.value) == (f"--report-to trackio: {tmp_path}/f is a file, not a folder "
                                  f"(it writes to {tmp_path}/f/a/b); change TRACKIO_DIR")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "f"]


def test_a_folder_that_cannot_be_made_says_why(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(PreftuneError) as refused:
        writable_folder(tmp_path / "new", "recipe.yaml:1: field 'output_dir'", "set output_dir to another folder")
    assert str(refused.value) == (f"recipe.yaml:1: field 'output_dir': cannot create {tmp_path}/new "
                                  "(Read-only file system); set output_dir to another folder")


@contextlib.contextmanager
def folder_with_mode(folder: Path, mode: int):
    """`folder`, made with permissions `mode`; writable again afterwards, so pytest can remove it."""
    folder.mkdir()
    folder.chmod(mode)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


@NOT_ROOT
def test_a_read_only_folder_is_refused(tmp_path):
    with folder_with_mode(tmp_path / "ro", 0o555) as folder:
        with pytest.raises(PreftuneError) as refused:
            writable_folder(folder, "--output-dir", "pass another folder")
        assert str(refused.value) == f"--output-dir: {folder} is not writable; pass another folder"
        with pytest.raises(PreftuneError) as refused:
            writable_folder(folder / "runs", "--output-dir", "pass another folder")
        assert str(refused.value) == f"--output-dir: cannot create {folder}/runs (Permission denied); pass another folder"


@NOT_ROOT
def test_a_folder_that_cannot_be_looked_into_is_one_line_not_a_traceback(tmp_path):
    """stat() below a folder without x permission fails with EACCES (Path.exists raises it before 3.12)."""
    with folder_with_mode(tmp_path / "closed", 0o000) as folder:
        with pytest.raises(PreftuneError) as refused:
            writable_folder(folder / "a" / "b", "--output-dir", "pass another folder")
        assert str(refused.value) == (f"--output-dir: cannot create {folder}/a/b (Permission denied); "
                                      "pass another folder")
