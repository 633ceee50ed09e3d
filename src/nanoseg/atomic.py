"""Atomic file writes: write to a temporary file beside the target, then rename.

A process killed at any moment leaves either the old file or the new one, never half of one;
:func:`replacing` does the same for a set of files that belong together (a table and its
summary, a report and its figures).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nanoseg.errors import NanosegError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The temporary name keeps the target's suffix so that writers choosing a format by
    extension (tifffile, matplotlib, numpy) do the right thing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep this naming in step with _TEMP_NAME, which is how a rerun finds what a kill left behind.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; results should be readable like any other file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def replacing(folder: str | Path, old: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Write a set of outputs that replaces an earlier set whole: all the new ones, or the old ones untouched.

    Yields a new hidden folder inside ``folder`` to write the outputs into. When the block ends
    without an exception, each entry written there is renamed into ``folder`` (replacing an entry
    of that name), then the ``old`` paths the new entries did not replace are removed. An
    exception (a full disk, an input found bad late) removes the new folder, and ``folder`` keeps
    every earlier output as it was.

    Parameters
    ----------
    folder : path
        Where the outputs go; created if missing.
    old : sequence of path
        Earlier outputs (files or folders) this set replaces.

    Yields
    ------
    Path
        The folder to write the new outputs into.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Named like atomic_path's files, so that one a kill leaves behind is cleared as theirs are.
    new = Path(tempfile.mkdtemp(prefix=".nanoseg-new.", suffix=".tmp", dir=folder))
    try:
        yield new
        replaced = set()
        for entry in sorted(new.iterdir()):
            target = folder / entry.name
            if entry.is_dir() and target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # a rename replaces an empty folder only
            os.replace(entry, target)
            replaced.add(entry.name)
        for path in map(Path, old):
            if path.name in replaced and path.parent.resolve() == folder.resolve():
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(new, ignore_errors=True)


# The names atomic_path creates: ".<stem>." + mkstemp's 8 random characters (lower-case letters,
# digits, "_") + ".tmp<suffix>". Narrow on purpose: anything else in a folder is not ours to delete.
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?")


def is_temp_file(path: str | Path) -> bool:
    """True when ``path`` is named like a temporary file of :func:`atomic_path`."""
    return _TEMP_NAME.fullmatch(Path(path).name) is not None


def user_path(path: str | Path) -> Path:
    """``path`` without the temporary names of :func:`atomic_path` and :func:`replacing` in it.

    What a user knows the path as: a temporary file stands for its folder, a file in the new
    folder of :func:`replacing` for the file it becomes.
    """
    return Path(*(part for part in Path(path).parts if not is_temp_file(part)))


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` and below it.

    Only a killed process leaves them (any other exit removes them), so call this only where no
    writer can be at work, such as a stage folder before the stage starts.

    Parameters
    ----------
    folder : path
        Folder to clean; a missing folder is fine.

    Returns
    -------
    list of Path
        The files deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    leftovers = sorted(p for p in folder.rglob("*") if p.is_file() and is_temp_file(p))
    for p in leftovers:
        p.unlink(missing_ok=True)
    return leftovers


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON (indented, keys in insertion order) atomically."""
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths: the things stage summaries usually hold.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def embed_section(path: str | Path, name: str, content: str) -> Path:
    """Replace the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in a text file.

    Generated parts of a hand-written document (docs/config.md's reference, the README's benchmark
    tables) live between such markers, so a script can rewrite them in place.
    """
    path = Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text()
    if start not in text or end not in text:
        raise NanosegError(f"{path}: no '{start}' ... '{end}' markers to write between")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return write_text(path, f"{head}{start}\n{content}\n{end}{tail}")


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks: models and pair archives can be large.

    The one file hash of the stage markers, the batch markers and the training fingerprints.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(root: str | Path, path: str | Path) -> dict[str, Any]:
    """How an output file was written, for a marker: path relative to ``root``, size, SHA-256."""
    path = Path(path)
    return {"path": path.relative_to(root).as_posix(), "size_bytes": path.stat().st_size, "sha256": file_sha256(path)}


def changed_files(root: str | Path, records: Sequence[dict[str, Any]]) -> str | None:
    """Why files recorded by :func:`file_record` no longer hold (missing, other size, other bytes), or None.

    Sizes of all first: a missing or truncated file is found without hashing gigabytes.
    """
    root = Path(root)
    problems = []
    for rec in records:
        path = root / rec["path"]
        if not path.is_file():
            problems.append(f"{rec['path']} is missing")
        elif path.stat().st_size != rec["size_bytes"]:
            problems.append(f"{rec['path']} changed since it was written "
                            f"({rec['size_bytes']} -> {path.stat().st_size} bytes)")
    if not problems:
        for rec in records:
            try:
                same = file_sha256(root / rec["path"]) == rec["sha256"]
            except OSError:
                problems.append(f"{rec['path']} cannot be read")
                continue
            if not same:
                problems.append(f"{rec['path']} changed since it was written (same size, other content)")
    if not problems:
        return None
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
