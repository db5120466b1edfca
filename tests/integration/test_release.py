"""The release a user installs (README.md#dependencies): `python -m build` makes a wheel that
carries the console; installed into a fresh virtualenv, `extauthz admin` serves the console
page from it, and `extauthz --version` is the one version."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

from extauthz import __version__
from extauthz.dev.ports import free_port, port_open
from tests.support.procs import REPO, stop, wait_for


def test_the_wheel_installs_and_serves_the_console(tmp_path: Path) -> None:
    dist, source = tmp_path / "dist", tmp_path / "source"  # (built out of the tree)
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    shutil.copytree(
        REPO / "extauthz", source / "extauthz", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("extauthz-*.whl")
    assert wheel.name.startswith(f"extauthz-{__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for file in ("index.html", "console.js", "console.css"):
        assert f"extauthz/admin/console/{file}" in names
    # a fresh venv with the wheel alone; its dependencies borrowed from this one's
    # site-packages (read-only, after its own: the wheel's copy of extauthz is the one used)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin/python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=120,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    found = subprocess.run(
        [str(python), "-c", "import extauthz; print(extauthz.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert found.startswith(str(venv)), found
    version = subprocess.run(
        [str(venv / "bin/extauthz"), "--version"], check=True, capture_output=True, text=True
    )
    assert version.stdout.strip() == f"extauthz {__version__}"
    port = free_port()
    proc = subprocess.Popen(
        [str(venv / "bin/extauthz"), "admin", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 20, "extauthz admin")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and "console.js" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=5) as resp:
            assert f'"version":"{__version__}"' in resp.read().decode()
    finally:
        stop(proc)
