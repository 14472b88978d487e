"""Report folders are replaced all or nothing (issue 23, section 2): a reader or a crash sees the old
files or the new ones, never a mix; files a render does not write stay."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from clbench import files
from clbench.files import OutputError, staged_folder


def _render(folder, generation: int, names=("a.md", "b.md", "c.csv")) -> None:
    with staged_folder(folder) as stage:
        for name in names:
            (stage / name).write_text(str(generation))


def test_a_render_replaces_the_folder_and_keeps_files_it_does_not_write(tmp_path):
    folder = tmp_path / "reports" / "fig4"
    _render(folder, 1)
    (folder / "notes.txt").write_text("mine")
    (folder / "sub").mkdir()
    (folder / "sub" / "x").write_text("kept too")
    _render(folder, 2, names=("a.md", "b.md"))
    assert {p.name: p.read_text() for p in folder.iterdir() if p.is_file()} == {
        "a.md": "2",
        "b.md": "2",
        "c.csv": "1",
        "notes.txt": "mine",
    }
    assert (folder / "sub" / "x").read_text() == "kept too"
    assert sorted(os.listdir(tmp_path / "reports")) == ["fig4"]  # no staging folder, no old folder left


def test_a_failure_while_the_folder_is_replaced_leaves_the_old_files_only(tmp_path, monkeypatch):
    """The second move of the commit fails (EIO): file by file, the folder would hold a new a.md
    beside an old b.md. All or nothing, it holds the old files."""
    folder = tmp_path / "fig4"
    _render(folder, 1, names=("a.md", "b.md", "extra1", "extra2"))
    calls = {"n": 0}

    def failing_second(real):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.EIO, "Input/output error")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(files.os, "replace", failing_second(os.replace))
    monkeypatch.setattr(files.os, "link", failing_second(os.link))
    with pytest.raises(OutputError, match="Input/output error"):
        _render(folder, 2, names=("a.md", "b.md"))
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"a.md": "1", "b.md": "1", "extra1": "1", "extra2": "1"}
    assert sorted(os.listdir(tmp_path)) == ["fig4"]


def test_a_reader_never_sees_two_renders_at_once(tmp_path):
    """A reader holding the folder open (as a browser or a sync tool reading it) sees each file of one
    render: the swap is one step."""
    folder = tmp_path / "fig4"
    names = tuple(f"f{i}.md" for i in range(20))
    _render(folder, 0, names)
    mixed, seen, stop = [], set(), threading.Event()

    def read():
        while not stop.is_set():
            fd = os.open(folder, os.O_RDONLY)
            try:
                values = set()
                for name in names:
                    with open(os.open(name, os.O_RDONLY, dir_fd=fd)) as f:
                        values.add(f.read())
            except FileNotFoundError:  # the old folder's files removed under us: read again
                continue
            finally:
                os.close(fd)
            seen.update(values)
            if len(values) > 1:
                mixed.append(values)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for generation in range(1, 150):
            _render(folder, generation, names)
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 1  # the reader did see renders change
    assert not mixed, mixed[:3]
