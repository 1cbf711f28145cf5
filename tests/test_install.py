"""The install step leaves ``dicomfs`` on the PATH that the README's commands use bare."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_dicomfs_is_on_the_default_path_after_install() -> None:
    home = os.environ.get("HOME", "/root")
    path = STANDARD_PATH if os.getuid() == 0 else f"{home}/.local/bin:{STANDARD_PATH}"
    found = subprocess.run(["bash", "-c", "command -v dicomfs && dicomfs --version"], capture_output=True,
                           text=True, env={"PATH": path, "HOME": home}, timeout=60)
    assert found.returncode == 0, found.stderr
    where, version = found.stdout.splitlines()
    assert Path(where).resolve() == (REPO / ".venv" / "bin" / "dicomfs").resolve()
    assert version.startswith("dicomfs ")
