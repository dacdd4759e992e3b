"""Running the external programs the build needs, with typed errors instead of bare tracebacks."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from compression.data.errors import ToolMissingError

# What to tell someone whose machine lacks a tool.
_INSTALL_HINTS = {
    "apt-get": "the corpus is built from Debian packages: run it on Debian or Ubuntu",
    "dpkg-deb": "install the Debian package 'dpkg'",
    "dpkg-query": "install the Debian package 'dpkg'",
    "npm": "install the Debian package 'npm'",
    "espeak-ng": "install the Debian package 'espeak-ng'",
    "text2wave": "install the Debian package 'festival' and its voices",
}


def require_tool(tool: str) -> str:
    """The absolute path of ``tool``, or :class:`ToolMissingError` naming what to install."""
    path = shutil.which(tool)
    if path is None:
        raise ToolMissingError(tool, _INSTALL_HINTS.get(tool, "install it"))
    return path


def run_tool(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``args`` (the tool is looked up first) and return the finished process, whatever its status."""
    executable = require_tool(args[0])
    return subprocess.run(
        [executable, *args[1:]],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def tail(output: bytes, characters: int = 600) -> str:
    """The end of a tool's output, decoded for an error message."""
    text = output.decode("utf-8", errors="replace").strip()
    return text[-characters:]
