"""Writing output files and folders all or nothing, after checking where they go.

Exports and reports are checked before any work (a folder that does not exist or cannot be written
is one ``OutputError`` line, not a traceback after the work), then written beside their target under
a temporary name and renamed into place: an error or an interruption leaves the previous file or
folder as it was, never half of a new one.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot be written; the message is one line naming it and why."""


def _umask() -> int:
    """The process's umask, read without changing it (Linux); the usual 022 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _writable(folder: Path) -> bool:
    # os.access also answers False on read-only storage (EROFS), even for root.
    return os.access(folder, os.W_OK | os.X_OK)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _special(p: Path) -> bool:
    """True if ``p`` (links followed) exists and is neither a regular file nor a folder: a FIFO, a
    device, a socket, a pipe such as ``/dev/fd/63`` from a shell's ``>(cmd)``."""
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _link_target(p: Path) -> Path:
    """The file a symbolic link ``p`` names (links resolved), so that writing replaces that file and
    leaves the link a link; ``p`` itself when it is not a link."""
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def check_output_file(path: str | os.PathLike) -> Path:
    """``path`` as a file that can be written (created or replaced); ``OutputError`` otherwise. A
    FIFO, a device or a pipe is written through (it needs only to be writable); a symbolic link
    is followed, its target is the file that gets replaced."""
    p = Path(path)
    if _special(p):
        if not os.access(p, os.W_OK):
            raise OutputError(f"cannot write {p}: no permission to write to it")
        return p
    if p.is_dir():
        raise OutputError(f"cannot write {p}: it is a folder; give a file path, e.g. {p / 'runs.csv'}")
    target = _link_target(p)
    parent = target.absolute().parent
    if not parent.exists():
        raise OutputError(f"cannot write {p}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot write {p}: {parent} is not a folder")
    if not _writable(parent) or (target.exists() and not os.access(target, os.W_OK)):
        raise OutputError(f"cannot write {p}: {parent} is not writable (no permission, or read-only storage)")
    return p


def check_output_folder(path: str | os.PathLike) -> Path:
    """``path`` as a folder whose files can be written (it, or its missing parents, can be created)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"cannot write into {p}: it is a file, not a folder")
    base = _nearest_existing(p.absolute())
    if not base.is_dir():
        raise OutputError(f"cannot create the folder {p}: {base} is a file, not a folder")
    if not _writable(base):
        raise OutputError(f"cannot write into {p}: {base} is not writable (no permission, or read-only storage)")
    return p


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block succeeds,
    removed when it fails. OS errors become one-line ``OutputError``s. A symbolic link stays a link
    (the file it names is replaced); a FIFO, device or pipe is never replaced: the block writes
    straight to it (no all or nothing there: what was written before an error stays written)."""
    checked = check_output_file(path)
    if _special(checked):
        try:
            yield checked
        except OSError as exc:
            raise OutputError(f"cannot write {checked}: {exc.strerror or exc}") from None
        return
    target = _link_target(checked)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.absolute().parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {checked}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # what open() would have made, not mkstemp's 0600
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        raise OutputError(f"cannot write {checked}: {exc.strerror or exc}") from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def staged_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` to render into. When the block succeeds, its files land
    in ``path`` (created; a new folder by one rename, an existing one file by file, each file
    replaced whole; other files in it are left alone); an empty staging folder creates nothing.
    When the block fails, nothing in ``path`` has changed."""
    target = check_output_folder(path).absolute()
    base = _nearest_existing(target)
    try:
        staging = Path(tempfile.mkdtemp(dir=base, prefix=f".{target.name}.", suffix=".tmp"))
        os.chmod(staging, 0o777 & ~_umask())  # what mkdir would have made, not mkdtemp's 0700
    except OSError as exc:
        raise OutputError(f"cannot write into {path}: {exc.strerror or exc}") from None
    try:
        yield staging
        files = sorted(staging.iterdir())
        if files:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.rename(staging, target)
            else:
                for f in files:
                    os.replace(f, target / f.name)
    except OSError as exc:
        raise OutputError(f"cannot write into {path}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
