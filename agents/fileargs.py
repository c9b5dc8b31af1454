"""File arguments of the commands: a file a command cannot read or write ends it with
one line, `detector <cmd>: <path>: <reason>`, and exit status 2 (`agents.cli.main`
catches the OSError). Outputs are checked before the work starts, without creating or
truncating anything (an output may be the input)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def check_readable(path: str | Path | None) -> None:
    """Raise the OSError opening `path` for reading would raise ('-' or None: stdin)."""
    if path is None or str(path) == "-":
        return
    with open(path, "rb"):
        pass


def check_writable(path: str | Path | None, make_parents: bool = False) -> None:
    """Raise the OSError (with the path) that writing `path` would meet: a directory,
    a missing parent directory (unless `make_parents`), a parent that is a file, no
    permission. '-' or None: stdout."""
    if path is None or str(path) == "-":
        return
    p = Path(path)

    def fail(code: int) -> None:
        raise OSError(code, os.strerror(code), str(path))

    if p.is_dir():
        fail(errno.EISDIR)
    if p.exists():
        if not os.access(p, os.W_OK):
            fail(errno.EACCES)
        return
    parent = p.parent
    while make_parents and not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.exists():
        fail(errno.ENOENT)
    if not parent.is_dir():
        fail(errno.ENOTDIR)
    if not os.access(parent, os.W_OK | os.X_OK):
        fail(errno.EACCES)


def command_name(args: argparse.Namespace) -> str:
    """`score`, `config check`...: the prefix of the command's error lines."""
    sub = getattr(args, "config_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


@contextmanager
def output(path: str | Path | None) -> Iterator[IO[bytes]]:
    """`path` opened for writing (None: stdout, flushed at the end); an OSError while
    writing, flushing or closing it (a full disk, an I/O error) is raised again naming
    the path, so main reports it in one line. A closed pipe stays a BrokenPipeError."""
    name = "stdout" if path is None else str(path)
    try:
        if path is None:
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        else:
            with open(path, "wb") as f:
                yield f
    except BrokenPipeError:
        raise
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), name) from None
