"""A/B, feedback and shadow scoring on a real store: what shadow work costs clients, and live CER.

    python -m tests.bench.bench_ab --store .hush/store --requests 8

Starts hush in this process (uvicorn on a loopback port) twice on the same store:

1. shadow off, then shadow on (every request re-transcribed by the reference): the JFK clip sent by
   one client, one request at a time; median and p95 client latency of each run, and how many
   shadow jobs were scored or shed.
2. an experiment splitting clients between two variants (``--arms``), every request followed by
   feedback with the clip's true transcript; the results endpoint's per-arm figures are printed.

Not a test: the numbers depend on the machine. Set HUSH_RUNTIME__THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from app.main import create_app
from app.settings import ServerSettings
from app.state import AppState
from model_store.store import ModelStore
from tests.app_support import live_server, wait_until
from tests.conftest import JFK_TEXT

CLIP = Path(__file__).resolve().parents[1] / "data" / "jfk.wav"


def settings_for(store: Path, **sections: dict[str, Any]) -> ServerSettings:
    base = ServerSettings(store={"root": store})
    return base.model_copy(
        update={name: getattr(base, name).model_copy(update=values) for name, values in sections.items()}
    )


def run_clients(url: str, requests: int, client_ids: list[str], feedback: bool) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for index in range(requests):
            started = time.perf_counter()
            response = client.post(
                "/v1/audio/transcriptions",
                files={"file": ("jfk.wav", CLIP.read_bytes(), "audio/wav")},
                data={"language": "en"},
                headers={"X-Hush-Client-Id": client_ids[index % len(client_ids)]},
            )
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            if feedback:
                scored = client.post(
                    "/v1/feedback", json={"request_id": response.headers["x-request-id"], "text": JFK_TEXT}
                )
                scored.raise_for_status()
    return latencies


def shadow_cost(store: Path, requests: int, model: str, reference: str) -> None:
    print(
        "| shadow | requests | client p50 s | client p95 s | shadow scored | shed | shadow CER vs reference |"
    )
    print("|---|---|---|---|---|---|---|")
    for rate in (0.0, 1.0):
        shadow_run(store, requests, model, reference, rate)


def shadow_run(store: Path, requests: int, model: str, reference: str, rate: float) -> None:
    registry = CollectorRegistry()
    settings = settings_for(
        store,
        server={"default_model": model, "default_variants": [model]},
        shadow={"sample_rate": rate, "reference_variant": reference},
    )
    app = create_app(settings, registry=registry)
    with live_server(app) as url:
        state: AppState = app.state.hush
        wait_until(lambda: state.readiness.status == "ready", timeout=300, what="readiness")
        run_clients(url, 1, ["warm-up"], feedback=False)
        latencies = run_clients(url, requests, ["one"], feedback=False)
        shadow = state.ab.shadow
        assert shadow is not None
        wait_until(lambda: shadow.pending == 0, timeout=600, what="shadow jobs")
    labels = {"variant": model, "language": "en", "source": "shadow"}
    edits = registry.get_sample_value("hush_cer_edit_chars_total", labels) or 0
    chars = registry.get_sample_value("hush_cer_reference_chars_total", labels) or 0
    scored = registry.get_sample_value("hush_shadow_jobs_total", {"outcome": "scored"}) or 0
    shed = registry.get_sample_value("hush_shadow_jobs_total", {"outcome": "shed"}) or 0
    cer = f"{edits / chars:.3f} ({edits:.0f}/{chars:.0f})" if chars else "-"
    p95 = sorted(latencies)[max(0, round(0.95 * len(latencies)) - 1)]
    print(
        f"| {rate:g} | {requests} | {statistics.median(latencies):.2f} | {p95:.2f} | {scored:.0f} | "
        f"{shed:.0f} | {cer} |"
    )


def experiment(store: Path, requests: int, arms: list[str]) -> None:
    definition = {
        "arms": [{"name": f"arm-{index}", "variant": variant} for index, variant in enumerate(arms)],
        "match": {"languages": ["en"]},
    }
    app = create_app(settings_for(store, server={"default_variants": arms}))
    with live_server(app) as url:
        state: AppState = app.state.hush
        wait_until(lambda: state.readiness.status == "ready", timeout=300, what="readiness")
        httpx.put(f"{url}/v1/experiments/bench", json=definition).raise_for_status()
        run_clients(url, requests, [f"client-{index}" for index in range(requests)], feedback=True)
        results = httpx.get(f"{url}/v1/experiments/bench/results").json()
    print(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--model", default="whisper-tiny.en", help="the variant that serves (shadow run)")
    parser.add_argument("--reference", default="whisper-base", help="the shadow reference")
    parser.add_argument("--arms", nargs="+", default=["whisper-tiny.en", "whisper-tiny.en-ptq-int8"])
    parser.add_argument("--skip-shadow", action="store_true")
    arguments = parser.parse_args()
    ModelStore(arguments.store).get(arguments.model)  # fail early on a wrong store
    if not arguments.skip_shadow:
        shadow_cost(arguments.store, arguments.requests, arguments.model, arguments.reference)
    experiment(arguments.store, arguments.requests, arguments.arms)


if __name__ == "__main__":
    main()
