"""The evaluation's noise floor: a variant whose numbers differ from its parent's only by rounding.

    python -m tests.bench.noise_floor whisper-base            # publishes whisper-base-floatbf16att
    hush eval whisper-base-floatbf16att --no-latency           # then, as for any variant:
    hush eval compare whisper-base whisper-base-floatbf16att
    python -m tests.bench.noise_floor whisper-base --remove    # out of the store (its eval logs stay)

The published variant holds the parent's own weight files (hard links, no copy) and differs only in
its manifest's ``encoder_attention: bfloat16``: the encoder's self-attention scores are rounded to
bfloat16 (``model_store/backends/bf16_attention.py``), a change the step-by-step decoding probe
cannot see (KL 0.0000 on 81 utterances, top-1 agreement 99.7%). Whatever per-language CER change
``hush eval compare`` then shows is what greedy decoding makes of a rounding: the floor below which a
quantized variant's per-language differences mean nothing. It needs a CPU with native bfloat16
(``HUSH_RUNTIME__BF16_ATTENTION`` unset or true); elsewhere the variant runs float32 attention and
is identical to its parent.

Not a test: it writes into the configured store (``HUSH_STORE__ROOT``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from model_store.manifest import MANIFEST_FILENAME
from model_store.settings import HushSettings
from model_store.store import ModelStore

SUFFIX = "-floatbf16att"
_DERIVED_FIELDS = ("id", "eval", "latency", "bytes_on_disk", "weights", "created_at")


def publish_rounded_twin(store: ModelStore, parent_id: str) -> str:
    """Publish ``parent_id``'s weights under ``parent_id + SUFFIX`` with bfloat16 encoder attention."""
    parent = store.get(parent_id)
    if parent.backend != "transformers":
        raise SystemExit(f"{parent_id} runs on {parent.backend}; bfloat16 attention is the transformers path")
    twin_id = parent_id + SUFFIX
    source = store.path(parent_id)
    with store.publish(twin_id) as staging:
        for path in source.iterdir():
            if path.is_file() and path.name != MANIFEST_FILENAME:
                os.link(path, staging.directory / path.name)
        fields = {key: value for key, value in parent.model_dump().items() if key not in _DERIVED_FIELDS}
        staging.commit(**{**fields, "parent": parent_id, "encoder_attention": "bfloat16"})
    return twin_id


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("parent", help="a transformers variant of the store, e.g. whisper-base")
    parser.add_argument("--remove", action="store_true", help="remove the twin instead of publishing it")
    args = parser.parse_args(argv)
    store = ModelStore(HushSettings().store.root)
    if args.remove:
        store.remove(args.parent + SUFFIX)
        print(f"removed {args.parent + SUFFIX}")
        return
    print(f"published {publish_rounded_twin(store, args.parent)}")


if __name__ == "__main__":
    main()
