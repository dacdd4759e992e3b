"""Real Prometheus binaries for the monitoring tests, from Debian's ``prometheus`` package.

The package is downloaded once with the corpus builder's pinned-package cache (``apt-get download``,
SHA-256 checked, ``dpkg-deb -x``) into ``<HUSH_HOME>/cache``; tests skip, saying why, only when it
cannot be had (no apt, no network, another architecture).
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from compression.data.debian import PackageCache, PinnedPackage
from compression.data.errors import DownloadError, ToolMissingError
from model_store.settings import HushSettings

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
RULES = sorted((MONITORING / "prometheus" / "rules").glob("*.yml"))

# Debian 12 (bookworm), amd64; the SHA-256 was recorded from the first download.
PROMETHEUS_DEB = PinnedPackage(
    "prometheus", "2.42.0+ds-5+deb12u1", "81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55"
)


@dataclass(frozen=True)
class PrometheusBinaries:
    prometheus: Path
    promtool: Path


def prometheus_binaries(cache: Path | None = None) -> PrometheusBinaries:
    """The unpacked binaries; ``pytest.skip`` with the reason when they cannot be fetched."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"the pinned prometheus package is for amd64, this machine is {platform.machine()}")
    cache = cache if cache is not None else HushSettings().cache_dir
    try:
        root = PackageCache(cache).unpack_deb(PROMETHEUS_DEB)
    except (DownloadError, ToolMissingError, OSError) as error:  # a checksum mismatch fails
        pytest.skip(f"cannot fetch Debian's prometheus {PROMETHEUS_DEB.version}: {error}")
    binaries = PrometheusBinaries(root / "usr" / "bin" / "prometheus", root / "usr" / "bin" / "promtool")
    for binary in (binaries.prometheus, binaries.promtool):
        assert binary.is_file(), f"{binary} missing from the unpacked package"
    return binaries


def promtool(
    binaries: PrometheusBinaries, *arguments: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries.promtool), *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def wait_for(condition: Any, *, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll until ``condition()`` returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last error: {last_error})")
