"""Sources: where raw rows come from. `iter_records(SRC)` yields `Record`s (a dict row, its source, its
line or row number), in a deterministic order.

A SRC is a shipped sample's name, a local file (data/files.py reads one), a folder of such files (read
recursively; split by split where a command picks one), a `datasets` `save_to_disk` folder, or a hub id.
Whether SRC is a path or a hub id is `preftune.hubids`' one rule: a path that looks local but does not
exist is "not found" at once, never a Hub request. Everything the file system can refuse (a missing or unreadable file or
folder, a broken symbolic link, a device) is one line naming the path, never a silently smaller dataset.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from preftune.data.files import DATA_SUFFIXES, Record, first_line, iter_file
from preftune.errors import DataError, PreftuneError
from preftune.hubids import is_hub_id, looks_local

logger = logging.getLogger(__name__)

# name → file inside preftune/data/sample/ (see PROVENANCE.md there)
SHIPPED: dict[str, str] = {"tldr-sample": "tldr_comparisons.jsonl.gz"}

# hub id → the config to load when --hub-config is not given
HUB_DEFAULT_CONFIGS: dict[str, str] = {"openai/summarize_from_feedback": "comparisons"}


def shipped_path(name: str) -> Path:
    return Path(str(resources.files("preftune.data") / "sample" / SHIPPED[name]))


# ---- what a local path is --------------------------------------------------------------------------


def path_kind(path: Path) -> str:
    """'file', 'dir', 'missing', 'broken link' or 'other' (a device, a FIFO, a socket). A path the file
    system refuses to look at (a parent without permission, a symlink loop) is one clear error."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken link" if os.path.islink(path) else "missing"
        raise PreftuneError(f"{path}: cannot access ({e.strerror or e}): check the path and its permissions") from None
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def broken_link(path: Path, where: str = "") -> PreftuneError:
    try:
        target = f" → {os.readlink(path)}"
    except OSError:
        target = ""
    return PreftuneError(f"{path}: a broken symbolic link{target}{where}: fix the link or remove it")


def describe(spec: str) -> str:
    """A one-line description of where SRC resolves to (printed before loading); never raises."""
    if spec in SHIPPED:
        return f"shipped sample '{spec}' ({shipped_path(spec).name}, see preftune/data/sample/PROVENANCE.md)"
    path = Path(spec).expanduser()
    try:
        kind = path_kind(path)
    except PreftuneError:
        return f"local path {spec}"
    if kind == "dir":
        return f"saved `datasets` folder {spec}" if is_saved_dataset(path) else f"local folder {spec}"
    if kind == "file":
        return f"local file {spec}"
    return f"hub dataset {spec}" if kind == "missing" and is_hub_id(spec) else f"local path {spec}"


def iter_records(spec: str, hub_config: str | None = None, split: str = "train",
                 split_flag: str | None = None) -> Iterator[Record]:
    """Yield every row of SRC, in a deterministic order (folders: files sorted by path). With `split_flag`
    (the flag that set `split`, e.g. --sft-split) a folder of split files (`split_files`) yields only that
    split's files, and a file or plain folder refuses a split other than train."""
    if not spec or not spec.strip():
        raise PreftuneError("--dataset is empty: pass a file, a folder, a shipped sample "
                            f"({', '.join(SHIPPED)}) or a hub id (owner/name)")
    if spec in SHIPPED:
        _unused_flags(spec, hub_config, split)
        yield from iter_file(shipped_path(spec), label=f"{spec}/{SHIPPED[spec]}")
        return
    path = Path(spec).expanduser()
    kind = path_kind(path)
    if kind == "dir":
        if is_saved_dataset(path):
            _unused_flags(spec, hub_config, None)
            yield from _iter_saved(path, split)
        else:
            files = data_files(path)
            if split_flag:
                _unused_flags(spec, hub_config, None)
                files = files_of_split(path, files, split, split_flag)
            else:
                _unused_flags(spec, hub_config, split)
            for file in files:
                yield from iter_file(file)
    elif kind == "file":
        if split_flag and canonical_split(split) != "train":
            raise PreftuneError(f"{split_flag} {split}: {spec} is one file, with no splits to pick from; pass the "
                                f"file of that split, or a folder of split files")
        _unused_flags(spec, hub_config, None if split_flag else split)
        yield from iter_file(path)
    elif kind == "broken link":
        raise broken_link(path)
    elif kind == "other":
        raise PreftuneError(f"{spec}: not a regular file or a folder (a device, pipe or socket): pass a data file")
    elif is_hub_id(spec):
        yield from _iter_hub(spec, hub_config or HUB_DEFAULT_CONFIGS.get(spec), split)
    else:
        local = " (it looks like a local path: check its spelling and the current folder)" if looks_local(spec) else ""
        raise PreftuneError(
            f"dataset '{spec}' not found: it is not a file, a folder, a shipped sample "
            f"({', '.join(SHIPPED)}) or a hub id (owner/name){local}"
        )


def _unused_flags(spec: str, hub_config: str | None, split: str | None) -> None:
    """Say so when --hub-config or --split cannot apply to SRC, instead of ignoring them silently."""
    if hub_config:
        logger.warning(f"data: --hub-config {hub_config} applies to hub datasets only; ignored for {spec}")
    if split not in (None, "train"):
        logger.warning(f"data: --split {split} applies to hub datasets and saved DatasetDicts only; ignored for {spec}")


# a split file's name starts with its split: train.jsonl, valid.jsonl, eval.jsonl (a prepared folder's
# validation split), test-00000-of-00001.parquet (a hub dataset's files)
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
               "eval": "validation", "dev": "validation", "test": "test"}


def canonical_split(name: str) -> str:
    """A split's name as preftune says it (train, validation, test); other names as they are."""
    return SPLIT_NAMES.get(name.lower(), name)


def split_of(file: Path) -> str | None:
    """The split a data file's name says it holds (its name up to the first '.', '-' or '_'), else None."""
    first = re.split(r"[.\-_]", file.name, maxsplit=1)[0].lower()
    return SPLIT_NAMES.get(first)


def files_of_split(folder: Path, files: list[Path], split: str, flag: str) -> list[Path]:
    """The files of `split` in a folder of split files (every data file's name says its split); a folder
    whose files say none is one split, train. A folder mixing both, or without `split`, is one line."""
    named = {f: split_of(f) for f in files}
    if not any(named.values()):
        if canonical_split(split) != "train":
            raise PreftuneError(f"{flag} {split}: no file in {folder} is named for a split (train*, valid*, "
                                f"test*); its files are one split, train: drop {flag}")
        return files
    unnamed = [f for f, s in named.items() if s is None]
    if unnamed:
        raise PreftuneError(f"{unnamed[0]}: a file not named for a split (train*, valid*, test*) among split files in "
                            f"{folder}; rename it or move it out, so no row is read into the wrong split")
    wanted = [f for f, s in named.items() if s == canonical_split(split)]
    if not wanted:
        present = sorted({s for s in named.values() if s})
        raise PreftuneError(f"{flag} {split}: {folder} has no {split} split file; its splits: {', '.join(present)}")
    return wanted


def data_files(folder: Path) -> list[Path]:
    """The data files in a folder and its subfolders (e.g. HH-RLHF's helpful-base/test.jsonl.gz, ...),
    sorted by path; hidden files and folders are ignored. A subfolder that cannot be read, a broken
    symbolic link or a data-file name that is not a regular file stops with its path: a dataset must
    never be silently smaller than the folder."""
    files: list[Path] = []
    seen: set[str] = set()  # real paths of the folders walked: a symlink loop is walked once

    def walk(current: Path) -> None:
        real = os.path.realpath(current)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(current) as it:
                names = sorted(entry.name for entry in it)
        except OSError as e:
            inside = "" if current == folder else f" (inside {folder})"
            raise PreftuneError(f"{current}: cannot read this folder{inside} ({e.strerror or e}): fix its "
                                "permissions, or move it out of the dataset folder") from None
        for name in names:
            if name.startswith("."):
                continue
            path = current / name
            kind = path_kind(path)
            if kind == "broken link":
                raise broken_link(path, f" in {folder}")
            if kind == "dir":
                walk(path)
            elif name.lower().endswith(DATA_SUFFIXES):
                if kind != "file":
                    raise PreftuneError(f"{path}: not a regular file (a device, pipe or socket): remove it from "
                                        f"{folder}")
                files.append(path)

    walk(folder)
    if not files:
        raise PreftuneError(f"{folder}: no data files ({', '.join(DATA_SUFFIXES)}) in this folder or its subfolders")
    return sorted(files)


# ---- saved `datasets` folders, the hub ------------------------------------------------------------


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    try:
        return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())
    except OSError:
        return False


def _iter_saved(path: Path, split: str) -> Iterator[Record]:
    import datasets  # heavy import, only for such folders

    try:
        ds = datasets.load_from_disk(str(path))  # memory-mapped Arrow: rows are read as iterated
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "could not load"
        raise DataError(str(path), None, None, f"cannot load this saved `datasets` folder ({type(e).__name__}: "
                        f"{first_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise PreftuneError(f"{path}: no split '{split}' in this saved DatasetDict; its splits: "
                                f"{', '.join(ds)} (pass --split)")
        ds = ds[split]
    else:
        _unused_flags(str(path), None, split)  # one split's own folder: --split has nothing to choose
    label = f"{path}[{split}]" if (path / "dataset_dict.json").is_file() else str(path)
    if len(ds) == 0:
        raise DataError(label, None, None, "no rows")
    for i, row in enumerate(ds, start=1):
        yield Record(dict(row), f"{label}[row]" if "[" not in label else label, i)


def _iter_hub(hub_id: str, config: str | None, split: str) -> Iterator[Record]:
    import datasets  # heavy import, only when a hub id is used

    label = f"{hub_id}[{config or 'default'}/{split}]"
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "could not load"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = (
            "offline mode is on and it is not in the local cache"
            if offline
            else "the hub could not be reached or the dataset/config/split does not exist"
        )
        raise PreftuneError(
            f"cannot load hub dataset {label}: {hint} ({type(e).__name__}: {first_line(e)[:200]}). "
            "Download it where there is network, or pass a local file/folder with --dataset."
        ) from None
    for i, row in enumerate(ds, start=1):
        yield Record(dict(row), label, i)
