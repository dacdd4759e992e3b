"""Every benchmark in turn, with defaults sized for a 2-core CPU machine (``make bench``).

    python -m tests.bench.run_all            # quantization table, then server overhead and throughput

The quantization benchmark quantizes the bundled base teacher into a temporary store and times each
variant against faster-whisper on the same weights (one thread everywhere, three rounds, so that the
ratios hold on a noisy machine). The server benchmark runs on the default store when it has been built
(``make store``), pinned to its CTranslate2 int8 variant, and on a tiny random variant otherwise.
Tables go to stdout; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from model_store.settings import HushSettings
from model_store.store import ModelStore
from tests.bench import bench_quantize, bench_server

SERVER_VARIANT = "whisper-base-ct2-int8"


def main(argv: Sequence[str] | None = None) -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)  # no options: --help prints the above instead of starting the benchmarks
    settings = HushSettings()
    print("# Quantization: size, CER, speed and peak memory against faster-whisper\n", flush=True)
    bench_quantize.main(["--threads", "1", "--rounds", "3"])
    print("\n# Server: HTTP overhead and throughput\n", flush=True)
    store_root = settings.store.root
    server_args = ["--threads", "1", "--requests", "10"]
    if store_root.is_dir() and SERVER_VARIANT in ModelStore(store_root).ids():
        server_args += ["--store", str(store_root), "--model", SERVER_VARIANT]
    bench_server.main(server_args)


if __name__ == "__main__":
    main()
