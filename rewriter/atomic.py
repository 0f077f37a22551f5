"""The one way this tool writes a file: atomically, with the mode a user expects.

`atomic_write(path, write)` creates a temporary file with a fresh random name beside
`path` (``O_CREAT | O_EXCL``: it never opens an existing file, so it never follows a
planted symlink), lets `write(tmp)` fill it, gives it the mode the target would get from
`open()` (the umask's: 0644 under umask 022) or, when the target already exists, the
target's own mode, flushes it to disk and renames it over `path`. On any failure the
temporary file is removed and `path` is untouched; an OSError (full disk, no permission)
becomes a one-line `BadInputError`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from rewriter.errors import BadInputError


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | os.PathLike[str]) -> int:
    """The mode `path` keeps (it exists as a regular file) or would get from open()."""
    try:
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode):
            return stat.S_IMODE(info.st_mode)
    except OSError:
        pass
    return 0o666 & ~current_umask()


def temp_beside(path: Path) -> Path:
    """A new, empty file with a random name in `path`'s folder (created exclusively)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp",
                                dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    return Path(name)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write `path` atomically: `write(tmp)` fills a temporary file, renamed over `path`."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"output {path} is a directory")
    mode = new_file_mode(path)
    try:
        tmp = temp_beside(path)
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        write(tmp)
        os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists() or tmp.is_symlink():
                tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)

    return atomic_write(path, write)
