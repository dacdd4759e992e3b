"""The `hush` command line, run as a user runs it: transcript on stdout, the rest on stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.cli import languages_cell
from model_store.store import ModelStore
from tests.conftest import DATA


def hush(*args: str, store: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "HUSH_STORE__ROOT": str(store),
        "HUSH_HOME": str(store.parent / "home"),
        **variables,
    }
    return subprocess.run(
        [sys.executable, "-m", "model_store.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_store_commands_and_transcribe(tiny_store: ModelStore) -> None:
    listing = hush("store", "ls", store=tiny_store.root)
    assert listing.returncode == 0, listing.stderr
    assert "tiny-random" in listing.stdout and "tiny" in listing.stdout

    shown = hush("store", "show", "tiny-random", store=tiny_store.root)
    assert '"id": "tiny-random"' in shown.stdout

    verified = hush("store", "verify", "tiny-random", store=tiny_store.root)
    assert verified.returncode == 0 and "match their SHA-256" in verified.stderr

    result = hush(
        "transcribe",
        str(DATA / "jfk.wav"),
        "--model",
        "tiny-random",
        "--language",
        "en",
        "--temperature",
        "0",
        store=tiny_store.root,
    )
    assert result.returncode == 0, result.stderr
    assert "tiny-random: language en" in result.stderr
    assert "language en" not in result.stdout  # only the transcript goes to stdout
    assert len(result.stdout.strip().splitlines()) == 1


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    empty = hush("transcribe", str(DATA / "jfk.wav"), store=tmp_path / "store")
    assert empty.returncode == 2
    assert "store" in empty.stderr and "empty" in empty.stderr and "Traceback" not in empty.stderr
    missing = hush("store", "show", "nope", store=tmp_path / "store")
    assert missing.returncode == 2 and "no variant 'nope'" in missing.stderr


JFK = str(DATA / "jfk.wav")


@pytest.mark.parametrize(
    ("args", "variables", "words"),
    [
        (("version",), {"HUSH_RUNTIME__THREADS": "abc"}, "HUSH_RUNTIME__THREADS='abc'"),
        (("store", "ls"), {"HUSH_RUNTIME__DEVICE": "tpu"}, "HUSH_RUNTIME__DEVICE='tpu'"),
        (("transcribe", "missing.wav"), {}, "does not exist"),
        (("transcribe", JFK, "--temperature", "nan"), {}, "between 0 and 1"),
        (("transcribe", JFK, "--task", "summarise"), {}, "transcribe' or 'translate"),
        (("transcribe", JFK, "--model", ""), {}, "invalid variant id"),
        (("serve", "--port", "99999"), {}, "--port 99999"),
        (("serve", "--host", ""), {}, "--host ''"),
        (("compress", "distill", "t", "--id", "s", "--languages", "en", "--preset", "bogus"), {}, "preset"),
        (("compress", "distill", "t", "--id", "s", "--languages", "en", "--steps", "-1"), {}, "--steps"),
        (("store", "import", ""), {}, "is empty"),
        (("data", "stats", "/nonexistent"), {}, "not a corpus"),
    ],
    ids=[
        "bad-env-int",
        "bad-env-choice",
        "missing-file",
        "nan-temperature",
        "bad-task",
        "empty-model",
        "bad-port",
        "empty-host",
        "bad-preset",
        "negative-steps",
        "empty-import-source",
        "not-a-corpus",
    ],
)
def test_a_user_mistake_is_one_line_and_status_2(
    tiny_store: ModelStore, args: tuple[str, ...], variables: dict[str, str], words: str
) -> None:
    result = hush(*args, store=tiny_store.root, **variables)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


def test_the_store_root_must_be_a_directory_and_log_levels_take_any_case(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a store")
    listing = hush("store", "ls", store=afile)
    assert listing.returncode == 2 and "is not a directory" in listing.stderr
    assert "Traceback" not in listing.stderr
    assert hush("version", store=tmp_path / "store", HUSH_LOG_LEVEL="debug").returncode == 0


def test_bad_audio_is_a_clear_error(tiny_store: ModelStore, tmp_path: Path) -> None:
    bogus = tmp_path / "not-audio.wav"
    bogus.write_text("this is text, not audio")
    result = hush("transcribe", str(bogus), "--model", "tiny-random", store=tiny_store.root)
    assert result.returncode == 2
    assert "audio" in result.stderr and "Traceback" not in result.stderr


def test_eval_table_and_a_request_to_measure_nothing(tiny_store: ModelStore) -> None:
    table = hush("eval", "table", "tiny-random", store=tiny_store.root)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == "| lang | tiny-random |"
    nothing = hush("eval", "tiny-random", "--no-accuracy", "--no-latency", store=tiny_store.root)
    assert nothing.returncode == 2 and "nothing to measure" in nothing.stderr


def test_store_ls_shows_a_language_list_whole_or_counts_it() -> None:
    assert languages_cell(("*",)) == "*"
    assert languages_cell(("es", "fr", "it", "ru")) == "es,fr,it,ru"
    assert languages_cell(("ca", "cs", "es", "nl", "ru")) == "5 langs"  # never "ca,cs,es,n"


def test_store_ls_keeps_columns_aligned_past_long_ids(tmp_path: Path) -> None:
    from tests.factories import store_with_tiny_variants

    long_id = "tiny-random-with-a-name-longer-than-the-column"
    store = store_with_tiny_variants(tmp_path / "store", "tiny-random", long_id)
    listing = hush("store", "ls", store=store.root)
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()
    assert len(rows) == 3 and any(row.startswith(long_id + " ") for row in rows)
    second_column = {re.match(r"\S+\s+", row).end() for row in rows}  # type: ignore[union-attr]
    assert second_column == {len(long_id) + 1}


def test_store_ls_keeps_columns_aligned_past_long_mixed_precision_dtypes(tmp_path: Path) -> None:
    from tests.factories import store_with_tiny_variants

    store = store_with_tiny_variants(tmp_path / "store", "tiny-a", "tiny-b")
    manifest_file = store.path("tiny-b") / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["dtype"] = "int2/3/4/5/6"  # as guided mixed precision labels its variants
    manifest_file.write_text(json.dumps(manifest))
    listing = hush("store", "ls", store=store.root)
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()
    assert "int2/3/4/5/6 " in rows[2]
    size_column_ends = {row.index(" MB") + 3 if " MB" in row else row.index("size") + 4 for row in rows}
    assert len(size_column_ends) == 1  # the size column starts and ends at the same place on every row
