"""A directory updated as the kubelet updates a mounted Secret (cert-manager's renewals reach
pods this way): the files go into a new hidden directory, a `..data_tmp` symlink to it is
renamed over `..data` in one step, and each file's path is a symlink through `..data`. So a
reader sees the old set or the new set, never a mix, and the paths themselves never change."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

_versions = itertools.count(1)


def swap(volume: Path, files: dict[str, bytes]) -> None:
    """Put `files` (name → content) in `volume` at once, and drop the previous set."""
    volume.mkdir(parents=True, exist_ok=True)
    data = volume / "..data"
    previous = data.resolve() if data.is_symlink() else None
    target = volume / f"..{next(_versions)}"
    target.mkdir()
    for name, content in files.items():
        (target / name).write_bytes(content)
    staged = volume / "..data_tmp"
    staged.symlink_to(target.name)
    staged.rename(data)  # the one atomic step
    for name in files:
        path = volume / name
        if not path.is_symlink():
            path.unlink(missing_ok=True)  # (a plain file: the first swap of a directory)
            path.symlink_to(f"..data/{name}")
    if previous is not None:
        shutil.rmtree(previous)
