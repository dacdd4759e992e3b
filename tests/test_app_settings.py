"""The server's settings (one object, from the environment) and the ``hush serve`` command."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from app import cli as app_cli
from app.cpu_budget import log_cpu_budget
from app.settings import AUTO_MODEL, MIB, WHISPER_1, ServerSettings
from model_store.manifest import RESERVED_MODEL_NAMES
from model_store.settings import RuntimeSettings


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = ServerSettings().server
    assert (defaults.host, defaults.port, defaults.max_upload_bytes) == ("127.0.0.1", 8000, 25 * MIB)
    assert defaults.api_keys == [] and defaults.default_model == "auto"
    monkeypatch.setenv("HUSH_SERVER__PORT", "8123")
    monkeypatch.setenv("HUSH_SERVER__API_KEYS", '["k1", "k2"]')
    monkeypatch.setenv("HUSH_SERVER__QUALITY_FLOOR_CER", "0.25")
    monkeypatch.setenv("HUSH_STORE__ROOT", "/srv/store")
    settings = ServerSettings()
    assert settings.server.port == 8123 and settings.server.quality_floor_cer == 0.25
    assert [key.get_secret_value() for key in settings.server.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(settings)  # keys stay out of logs
    assert str(settings.store.root) == "/srv/store"
    monkeypatch.setenv("HUSH_RUNTIME__THREADS", "")  # an empty variable (or env-file line) is not set
    monkeypatch.setenv("HUSH_SERVER__HOST", "")
    settings = ServerSettings()
    assert settings.runtime.threads == RuntimeSettings().threads and settings.server.host == "127.0.0.1"


def test_every_setting_builds_from_the_environment_without_a_warning() -> None:
    # a field type defined below its class once left pydantic-settings an unresolved forward reference;
    # it warns once per process, so a fresh one checks
    check = (
        "from app.settings import ServerSettings; s = ServerSettings(); "
        "print(s.runtime.device, s.distill.device)"
    )
    env = {**os.environ, "HUSH_RUNTIME__DEVICE": "cpu", "HUSH_DISTILL__DEVICE": "cuda"}
    built = subprocess.run(
        [sys.executable, "-W", "error", "-c", check], env=env, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert built.stdout.split() == ["cpu", "cuda"]


def test_a_device_setting_names_its_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUSH_DISTILL__DEVICE", "gpu")
    with pytest.raises(ValidationError, match="'auto', 'cpu' or 'cuda'"):
        ServerSettings()


@pytest.mark.parametrize(
    "server",
    [
        {"default_model": "Not An Id"},
        {"default_model": "whisper-1"},  # an alias of the default cannot be the default
        {"temperatures": [0.4, 0.2]},
        {"queue_size": -1},
        {"latency_ewma_alpha": 0},
    ],
)
def test_unsafe_values_are_refused(server: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ServerSettings(server=server)


def test_the_stores_reserved_names_are_the_servers_aliases() -> None:
    assert {AUTO_MODEL, WHISPER_1} == RESERVED_MODEL_NAMES


def test_serve_command_overrides_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **options: started.update(options, app=app))
    root = typer.Typer()
    root.command("noop")(lambda: None)  # a second command, so that typer keeps `serve` as a subcommand
    app_cli.register(root)
    result = CliRunner().invoke(root, ["serve", "--host", "0.0.0.0", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert (started["host"], started["port"]) == ("0.0.0.0", 8123)
    assert started["app"].title == "hush"


def test_the_cpu_budget_is_logged_and_a_busy_machine_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.cpu_budget"):
        log_cpu_budget(0, cores=2, load=0.3)
        assert "2 torch threads on 2 cores" in caplog.text and "busy" not in caplog.text
        log_cpu_budget(0, cores=2, load=2.5)
        assert "already busy (load 2.5 on 2 cores)" in caplog.text
        caplog.clear()
        log_cpu_budget(1, cores=2, load=2.5)  # one thread does not spin-wait on anyone
        assert "1 torch threads on 2 cores" in caplog.text and "busy" not in caplog.text
