"""Writing output files and folders all or nothing, after checking where they go.

Exports and reports are checked before any work (a folder that does not exist or cannot be written
is one ``OutputError`` line, not a traceback after the work), then written beside their target under
a temporary name and renamed into place: an error or an interruption leaves the previous file or
folder as it was, never half of a new one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
import time
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


def check_output_file(path: str | os.PathLike) -> Path:
    """``path`` as a file that can be written (created or replaced); ``OutputError`` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"cannot write {p}: it is a folder; give a file path, e.g. {p / 'runs.csv'}")
    parent = p.absolute().parent
    if not parent.exists():
        raise OutputError(f"cannot write {p}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot write {p}: {parent} is not a folder")
    if not _writable(parent) or (p.exists() and not os.access(p, os.W_OK)):
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
    removed when it fails. OS errors become one-line ``OutputError``s."""
    target = check_output_file(path)
    fd, tmp = tempfile.mkstemp(dir=target.absolute().parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # what open() would have made, not mkstemp's 0600
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def staged_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` to render into. When the block succeeds, it becomes
    ``path`` all at once: a new folder by one rename; an existing one by swapping the two folders
    in one step, after the files of the old folder that the render did not write are linked into
    the new one (so they stay). An empty staging folder creates nothing. When the block fails, or
    the swap cannot be made, nothing in ``path`` has changed: a reader sees the old files or the
    new ones, never some of each."""
    target = check_output_folder(path).absolute()
    base = _nearest_existing(target.parent)  # beside the folder: the two swap places
    remove_stale_staging(base, target.name)
    if target.is_dir():  # older clbench versions staged inside the folder itself
        remove_stale_staging(target, target.name)
    try:
        staging = _staging_folder(base, target.name)
        os.chmod(staging, 0o777 & ~_umask())  # what mkdir would have made, not mkdtemp's 0700
    except OSError as exc:
        raise OutputError(f"cannot write into {path}: {exc.strerror or exc}") from None
    leftover = staging
    try:
        yield staging
        if any(staging.iterdir()):
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.rename(staging, target)
            else:
                leftover = _replace_folder(target, staging)
    except OSError as exc:
        raise OutputError(f"cannot write into {path}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(leftover, ignore_errors=True)


def _staging_folder(base: Path, name: str) -> Path:
    """A new empty folder ``.NAME.PID.XXXXXXXX.tmp`` in ``base`` (``remove_stale_staging`` knows it)."""
    return Path(tempfile.mkdtemp(dir=base, prefix=f".{name}.{os.getpid()}.", suffix=".tmp"))


def _replace_folder(target: Path, staging: Path) -> Path:
    """Make the full ``staging`` folder ``target`` in one step; returns where the old folder went."""
    staged = re.compile(rf"\.{re.escape(target.name)}\..*\.tmp")  # another render's staging folder
    for entry in target.iterdir():  # what this render does not write stays, as it always has
        if not (staging / entry.name).exists() and not staged.fullmatch(entry.name):
            _carry(entry, staging / entry.name)
    if _exchange(staging, target):
        return staging  # now holding the old folder
    # Without an atomic exchange: the old folder aside, then the new one in (never a mix of both).
    old = _staging_folder(target.parent, target.name)
    os.rmdir(old)
    os.rename(target, old)
    os.rename(staging, target)
    return old


def _carry(source: Path, dest: Path) -> None:
    """``source`` into ``dest``: a hard link (instant, no copy), a copy where links cannot be made."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, dest, symlinks=True)
        return
    try:
        os.link(source, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        shutil.copy2(source, dest, follow_symlinks=False)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system
    or the filesystem has no such call (the caller falls back to two renames)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


# What follows ``.NAME.`` in a staging folder's name: the process id and mkdtemp's 8 characters
# (older clbench versions: those 8 alone).
_STAGING = re.compile(r"(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}")
LEGACY_STAGING_AGE_S = 3600.0  # a staging folder without its process's id: left behind when older than this


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user's process
        return True
    return True


def remove_stale_staging(base: Path, name: str) -> list[Path]:
    """Remove the staging folders ``.NAME.PID.XXXX.tmp`` in ``base`` that processes which have ended
    left behind (killed while rendering: SIGKILL, a power cut), and those of older clbench versions
    (``.NAME.XXXX.tmp``, no process id) that are over an hour old. Returns what was removed."""
    removed = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    prefix = f".{name}."
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")) or entry.is_symlink():
            continue
        mine = _STAGING.fullmatch(entry.name[len(prefix) : -len(".tmp")])
        if mine is None:
            continue
        try:
            if not entry.is_dir():
                continue
            if mine["pid"] is not None:
                stale = int(mine["pid"]) != os.getpid() and not _alive(int(mine["pid"]))
            else:
                stale = time.time() - entry.stat().st_mtime > LEGACY_STAGING_AGE_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
