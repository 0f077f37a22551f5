"""Output paths checked before any work: one clear line (exit 2) instead of a failure after
a long search, and never an output written over an input or over another output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from rewriter.errors import BadInputError

NAME_MAX = 255  # bytes per path component on Linux, macOS and Windows file systems
PATH_MAX = 4096


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (symlinks, `..`, hard links included)."""
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_path(path: str | os.PathLike[str], *, inputs: Iterable = (),
                      others: Iterable = (), what: str = "output",
                      create_parents: bool = False) -> Path:
    """Refuse (BadInputError, exit 2) an output path that cannot or must not be written.

    `inputs`: files the command reads (the output may not be one of them); `others`: the
    other files the same command writes (it may not be one of them either). With
    `create_parents`, missing folders are allowed (the writer creates them) provided the
    nearest existing one is a writable folder.
    """
    text = os.fspath(path)
    if not text or not text.strip():
        raise BadInputError(f"{what}: empty path")
    if "\x00" in text:
        raise BadInputError(f"{what}: the path contains a NUL byte")
    path = Path(text)
    try:
        encoded = os.fsencode(text)
    except UnicodeError:
        raise BadInputError(f"{what} {text!r}: the name cannot be encoded") from None
    if len(encoded) >= PATH_MAX:
        raise BadInputError(f"{what}: the path is {len(encoded)} bytes long; at most "
                            f"{PATH_MAX - 1}")
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise BadInputError(f"{what}: a name in the path is {len(os.fsencode(part))} bytes "
                                f"long; file names may have at most {NAME_MAX}")
    for given in inputs:
        if given is not None and same_file(path, Path(given)):
            raise BadInputError(f"{what} {path} would overwrite the input {given}; choose "
                                "another path")
    for given in others:
        if given is not None and same_file(path, Path(given)):
            raise BadInputError(f"{what} {path} is also another output of this command "
                                f"({given}); choose different paths")
    if path.is_dir():
        raise BadInputError(f"{what} {path} is a directory")
    if path.exists() and not path.is_file():
        raise BadInputError(f"{what} {path} exists and is not a regular file")
    parent = path.parent if str(path.parent) else Path(".")
    folder = parent
    if create_parents:
        while not folder.exists() and folder != folder.parent:
            if folder.is_symlink():
                raise BadInputError(f"{what} {path}: {folder} is a broken symlink")
            folder = folder.parent
    if not folder.exists():
        raise BadInputError(f"{what} {path}: the folder {parent} does not exist")
    if not folder.is_dir():
        raise BadInputError(f"{what} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInputError(f"{what} {path}: cannot write in the folder {folder} "
                            "(permission denied)")
    return path
