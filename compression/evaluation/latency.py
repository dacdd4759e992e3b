"""Latency of a variant on this machine, measured in a fresh process so its peak memory is its own.

Warm-up once over the clips, then ``runs`` timed passes with the evaluation's decoding; the figure kept
is the median over passes of milliseconds of compute per second of audio, with the thread count fixed
and recorded. Beside it, the median time of detecting a clip's language (one encoder pass and one
decoder step), which tells the router how much of the cost is the encoder's, paid per window.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from compression.evaluation.latency_clips import LatencyClip
from compression.evaluation.runner import evaluation_options
from model_store.manifest import Latency, MachineInfo
from model_store.opener import device_for, open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import SAMPLE_RATE


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_bytes() -> int:
    """This process's peak resident memory. ``ru_maxrss`` would include the parent's peak, which
    Linux carries across fork and exec; ``VmHWM`` is this process's own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_info(threads: int, device: str) -> MachineInfo:
    gpu = None
    if device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return MachineInfo(
        cpu=_cpu_name(),
        cores=os.cpu_count() or 1,
        threads=threads,
        gpu=gpu,
        torch=importlib.metadata.version("torch"),
        platform=platform.platform(terse=True),
    )


def _cuda_synchronize() -> None:
    import torch

    torch.cuda.synchronize()


def run_measurement(
    store_root: Path, variant_id: str, clips: list[LatencyClip], runs: int, runtime: RuntimeSettings
) -> dict[str, Any]:
    """Load, warm up, time; runs in the worker process.

    torch is imported only by variants that run on it, so a CTranslate2 variant's peak memory is its own.
    """
    threads = runtime.threads or os.cpu_count() or 1
    runtime = runtime.model_copy(update={"threads": threads})  # open_variant applies it to the backend
    started = time.perf_counter()
    transcriber = open_variant(ModelStore(store_root), variant_id, runtime, verify=False)
    load_seconds = time.perf_counter() - started
    audios = [(clip.load(), clip.language) for clip in clips]
    audio_seconds = sum(len(audio) for audio, _ in audios) / SAMPLE_RATE
    device = device_for(transcriber.manifest, runtime)
    cuda_synchronize = _cuda_synchronize if device == "cuda" else None

    def one_pass() -> float:
        begin = time.perf_counter()
        for audio, language in audios:
            transcriber.transcribe(audio, evaluation_options(language))
        if cuda_synchronize is not None:
            cuda_synchronize()
        return time.perf_counter() - begin

    def detection_ms() -> list[float]:
        """Milliseconds of detecting each clip's language (after the transcriptions: a detection
        remembers its encoder output for a transcription of the same clip, which would then skip it)."""
        timings = []
        for audio, _ in audios:
            begin = time.perf_counter()
            transcriber.detect_language(audio)
            if cuda_synchronize is not None:
                cuda_synchronize()
            timings.append(1000 * (time.perf_counter() - begin))
        return timings

    one_pass()  # warm-up
    per_pass_ms = [1000 * one_pass() / audio_seconds for _ in range(runs)]
    detection_ms()  # warm-up
    detections = [timing for _ in range(runs) for timing in detection_ms()]
    peak = peak_rss_bytes()
    if device == "cuda":
        import torch

        peak = int(torch.cuda.max_memory_allocated())
    median = statistics.median(per_pass_ms)
    return Latency(
        ms_per_audio_second=round(median, 2),
        real_time_factor=round(median / 1000, 4),
        peak_memory_bytes=peak,
        load_seconds=round(load_seconds, 3),
        runs=runs,
        device=device,
        machine=machine_info(threads, device),
        clip_seconds=round(statistics.median(clip.seconds for clip in clips), 2),
        language_detection_ms=round(statistics.median(detections), 2),
    ).model_dump(mode="json") | {"per_pass_ms": per_pass_ms, "audio_seconds": audio_seconds}


def measure_latency(
    store_root: Path, variant_id: str, clips: list[LatencyClip], runs: int, runtime: RuntimeSettings
) -> Latency:
    """Run :func:`run_measurement` in a child process and return its result."""
    request = {
        "store_root": str(store_root),
        "variant_id": variant_id,
        "clips": [
            {"paths": [str(path) for path in clip.paths], "language": clip.language, "seconds": clip.seconds}
            for clip in clips
        ],
        "runs": runs,
        "runtime": runtime.model_dump(mode="json"),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "compression.evaluation.latency"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"latency measurement of {variant_id} failed:\n{completed.stderr[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return Latency.model_validate(
        {key: value for key, value in result.items() if key in Latency.model_fields}
    )


def _worker() -> None:
    request = json.loads(sys.stdin.read())
    result = run_measurement(
        Path(request["store_root"]),
        request["variant_id"],
        [
            LatencyClip(tuple(Path(path) for path in clip["paths"]), clip["language"], clip["seconds"])
            for clip in request["clips"]
        ],
        int(request["runs"]),
        RuntimeSettings.model_validate(request["runtime"]),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    _worker()
