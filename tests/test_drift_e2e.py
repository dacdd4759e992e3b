"""End to end, natively, what docker-compose runs: two hush processes on one store of tiny random
variants, a real Prometheus scraping both with hush's rules loaded (windows and 'for' shortened in a
test copy), drift injected through feedback, and the alert firing. Also: both processes assign every
client to the same arm, and Prometheus pools their CER counters."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_store.store import ModelStore
from tests.app_support import eval_report, free_port, wav_bytes
from tests.factories import store_with_tiny_variants
from tests.monitoring_support import (
    MONITORING,
    ROOT,
    RULES,
    PrometheusBinaries,
    get_json,
    prometheus_binaries,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BASELINE_CER = 0.1
CLIENTS = [f"client-{index}" for index in range(6)]
# The true transcripts clients send back: nothing like what a random model says, so CER is near 1.
TRUTH = "the quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly " * 3


def shortened_rules(directory: Path) -> list[Path]:
    """The rules with hour-long windows cut to 5 minutes and 'for' durations to seconds (test only).

    The window must outlast the test's waits: the feedback stops before the pooled counters, the drift
    and the alert are awaited, and a rate over a window with no new samples left in it is no rate at
    all, so a 30 s window let the alert's conditions expire on a loaded machine before it fired."""
    directory.mkdir()
    copies = []
    for rules in RULES:
        text = rules.read_text()
        text = re.sub(r"\[(1h|1d|5m|15m)\]", "[5m]", text)
        text = re.sub(r"for: \d+m", "for: 3s", text)
        text = text.replace("interval: 30s", "interval: 1s")
        copy = directory / rules.name
        copy.write_text(text)
        copies.append(copy)
    return copies


@contextmanager
def process(
    command: list[str], *, env: dict[str, str], log: Path, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            yield child
        finally:
            child.terminate()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(30)


def post(
    url: str, *, fields: dict[str, str] | None = None, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[dict[str, str], Any]:
    headers = dict(headers or {})
    if fields is not None:  # multipart with the audio clip
        boundary = "hushboundary"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items()
        ]
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n".encode()
            + wav_bytes(1.0)
            + b"\r\n"
        )
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    else:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return {key.lower(): value for key, value in response.headers.items()}, json.load(response)


def query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    answer = get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression}))
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.fixture(scope="module")
def binaries() -> PrometheusBinaries:
    return prometheus_binaries()


def test_two_replicas_prometheus_pools_cer_and_the_drift_alert_fires(
    binaries: PrometheusBinaries, tmp_path: Path
) -> None:
    store: ModelStore = store_with_tiny_variants(tmp_path / "store", "tiny-a", "tiny-b")
    for variant in ("tiny-a", "tiny-b"):
        store.update(variant, eval=eval_report(en=BASELINE_CER))
    experiments = tmp_path / "experiments.json"
    arms = [{"name": "a", "variant": "tiny-a", "weight": 1}, {"name": "b", "variant": "tiny-b", "weight": 1}]
    experiments.write_text(
        json.dumps({"experiments": [{"name": "e2e", "match": {"languages": ["en"]}, "arms": arms}]})
    )
    ports = [free_port(), free_port()]
    prometheus_port = free_port()
    env = {
        **os.environ,
        "HUSH_HOME": str(tmp_path / "home"),
        "HUSH_STORE__ROOT": str(store.root),
        "HUSH_RUNTIME__DEVICE": "cpu",
        "HUSH_RUNTIME__THREADS": "1",
        "HUSH_SERVER__TEMPERATURES": "[0.0]",
        "HUSH_SERVER__STORE_POLL_SECONDS": "0",
        "HUSH_SERVER__DEFAULT_VARIANTS": '["tiny-a", "tiny-b"]',
        "HUSH_EXPERIMENTS__FILE": str(experiments),
        "HUSH_LOG_LEVEL": "WARNING",
    }
    rules = shortened_rules(tmp_path / "rules")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rules],
        "scrape_configs": [
            {"job_name": "hush", "static_configs": [{"targets": [f"127.0.0.1:{port}" for port in ports]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    servers = [f"http://127.0.0.1:{port}" for port in ports]
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    with ExitStack() as stack:
        for index, port in enumerate(ports):
            stack.enter_context(
                process(
                    [
                        sys.executable,
                        "-m",
                        "model_store.cli",
                        "serve",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    env=env,
                    log=tmp_path / f"hush-{index}.log",
                )
            )
        stack.enter_context(
            process(
                [
                    str(binaries.prometheus),
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                env=dict(os.environ),
                log=tmp_path / "prometheus.log",
            )
        )
        for server in servers:
            wait_for(
                lambda server=server: get_json(f"{server}/readyz")["status"] == "ready",
                timeout=240,
                what=f"{server}/readyz",
            )
        wait_for(
            lambda: urllib.request.urlopen(f"{prometheus}/-/ready", timeout=2).status == 200,
            timeout=60,
            what="prometheus",
        )
        # Prometheus must hold both replicas' CER counters at zero before any feedback: a series first
        # scraped after the feedback starts at its total, rate() then sees no increase and the drift
        # never shows (one CI run on a loaded machine timed out so).
        scraped = 'count by (instance) (hush_cer_edit_chars_total{source="feedback",language="en"})'
        wait_for(
            lambda: len(query(prometheus, scraped)) == len(servers),
            timeout=60,
            what="both replicas' CER counters scraped at zero",
        )

        # Sticky across replicas: each client gets the same arm from both processes, with no shared state.
        edits_by_variant: dict[str, int] = defaultdict(int)
        arms_seen: dict[str, set[str]] = defaultdict(set)
        for client in CLIENTS:
            for server in servers:
                headers, _ = post(
                    f"{server}/v1/audio/transcriptions",
                    fields={"language": "en", "model": "auto"},
                    headers={"X-Hush-Client-Id": client},
                )
                assert headers["x-hush-experiment"] == "e2e"
                arms_seen[client].add(headers["x-hush-arm"])
                _, scored = post(
                    f"{server}/v1/feedback", body={"request_id": headers["x-request-id"], "text": TRUTH}
                )
                assert scored["variant"] == headers["x-hush-variant"]
                edits_by_variant[scored["variant"]] += scored["edits"]
        assert all(len(arms) == 1 for arms in arms_seen.values()), arms_seen
        assert {arm for arms in arms_seen.values() for arm in arms} == {"a", "b"}

        # Prometheus pools the two processes' counters: its sums equal what the feedback answers said.
        def pooled() -> dict[str, float] | None:
            rows = query(
                prometheus, 'sum by (variant) (hush_cer_edit_chars_total{source="feedback",language="en"})'
            )
            found = {row["metric"]["variant"]: float(row["value"][1]) for row in rows}
            return (
                found
                if found
                == {k: float(v) for k, v in edits_by_variant.items()}
                | {v: 0.0 for v in ("tiny-a", "tiny-b") if v not in edits_by_variant}
                else None
            )

        wait_for(pooled, timeout=60, what="pooled CER counters")
        per_instance = query(
            prometheus, 'count(sum by (instance) (hush_cer_edit_chars_total{source="feedback"}) > 0)'
        )
        assert per_instance and float(per_instance[0]["value"][1]) == 2  # both replicas contributed

        # The drift recording rule and then the alert: live CER near 1 against a 0.1 baseline.
        drift = wait_for(
            lambda: query(
                prometheus, 'variant_language_source:hush_cer_drift:ratio_rate1h{source="feedback"} > 0.05'
            ),
            timeout=60,
            what="drift above the threshold",
        )
        assert {row["metric"]["language"] for row in drift} == {"en"}

        def firing() -> list[dict[str, Any]]:
            alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
            return [
                a for a in alerts if a["labels"]["alertname"] == "HushCerDrift" and a["state"] == "firing"
            ]

        alerts = wait_for(firing, timeout=90, what="HushCerDrift firing")
        assert {alert["labels"]["variant"] for alert in alerts} <= {"tiny-a", "tiny-b"}
        assert all(alert["labels"]["language"] == "en" for alert in alerts)

        # Every query of the Grafana dashboard is valid PromQL for this Prometheus.
        dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "hush.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                query(
                    prometheus,
                    target["expr"]
                    .replace("$variant", ".*")
                    .replace("$language", ".*")
                    .replace("$experiment", ".*"),
                )
