"""Reading files that users name (policy, route secrets, config, JWKS, TLS): safely.

Only regular files are read, never more than a stated size: a FIFO, a device such as
/dev/zero or a directory is refused at once instead of hanging or eating memory.
"""

from __future__ import annotations

import os
import stat


class UnreadableFile(OSError):
    """The path is not a regular file of acceptable size; the message says which."""


def read_regular_file(path: str, max_bytes: int) -> bytes:
    """The content of the regular file at `path`, at most `max_bytes` long.

    Raises UnreadableFile (an OSError) with a message fit for a one-line error, or the
    OSError of open/read (missing file, permission).
    """
    # O_NONBLOCK: opening a FIFO with no writer returns at once (then refused below)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise UnreadableFile(f"{path} is larger than {max_bytes} bytes")
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while being read
        raise UnreadableFile(f"{path} is larger than {max_bytes} bytes")
    return data


def describe(error: OSError) -> str:
    """A short reason for an OSError from read_regular_file."""
    if isinstance(error, UnreadableFile):
        return str(error)
    return error.strerror or str(error)
