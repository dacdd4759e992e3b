"""The speech corpus: splits, sentence splitting, parsing the sources, FLAC, index and reader, a build."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import compression.data.system_deps as system_deps
from compression.data.audio_io import flac_samples, read_flac, write_flac
from compression.data.build import BuildOptions, build
from compression.data.corpus import Corpus, Record, write_index
from compression.data.errors import (
    CorpusNotFoundError,
    CorruptCorpusError,
    DownloadError,
    SystemDepsMissingError,
)
from compression.data.items import Candidate, FileAudio
from compression.data.sources.asterisk import parse_prompts
from compression.data.sources.fillets import parse_dialogs
from compression.data.sources.udhr import split_sentences
from compression.data.splits import SPLITS, assign_splits, limit_per_language
from compression.data.system_deps import check_system_deps, debian_packages
from compression.data.text import sentence_key
from compression.data.tts import VOICES

_JSONL_KEYS = [
    "id",
    "path",
    "language",
    "text",
    "duration",
    "source",
    "speaker",
    "split",
    "synthetic",
    "licence",
]


def _candidate(id_: str, language: str, text: str, unit: str, *, synthetic: bool = False) -> Candidate:
    return Candidate(
        id=id_,
        language=language,
        source="synthetic" if synthetic else "recorded",
        text=text,
        speaker=unit,
        licence="CC0-1.0",
        synthetic=synthetic,
        unit=unit,
        audio=FileAudio(Path("/nonexistent")),
    )


def _pool() -> list[Candidate]:
    """Three kinds of language: sessions with shared lines, sentence units, and a two-voice synthetic one."""
    items: list[Candidate] = []
    for level in range(30):  # cs: 30 sessions of 12 lines; "Ano." recurs in every session
        for line in range(12):
            text = "Ano." if line == 0 else f"Věta {line} úrovně {level}."
            items.append(_candidate(f"cs-{level}-{line}", "cs", text, f"level:{level}"))
    for number in range(300):  # ru: one speaker, split by sentence; a few texts recorded twice
        text = f"Фраза номер {number % 280}"
        items.append(_candidate(f"ru-{number}", "ru", text, f"sentence:{sentence_key(text)}"))
    for voice in ("a", "b"):  # ca: two voices reading the same 90 sentences
        for number in range(90):
            items.append(
                _candidate(f"ca-{voice}-{number}", "ca", f"Frase {number}.", f"voice:{voice}", synthetic=True)
            )
    for number in range(50):  # cs synthetic speech: only ever train
        items.append(
            _candidate(f"cs-tts-{number}", "cs", f"Syntetická věta {number}.", "voice:x", synthetic=True)
        )
    return items


def test_splits_are_deterministic_capped_and_never_share_a_sentence() -> None:
    items = _pool()
    splits = assign_splits(items, max_dev=20, max_test=30)
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    assert assign_splits(shuffled, max_dev=20, max_test=30) == splits

    by_id = {item.id: item for item in items}
    owners: dict[tuple[str, str], set[str]] = {}
    for id_, split in splits.items():
        item = by_id[id_]
        owners.setdefault((item.language, sentence_key(item.text)), set()).add(split)
    assert all(len(found) == 1 for found in owners.values())

    counts = Counter((by_id[id_].language, split) for id_, split in splits.items())
    for language in ("cs", "ru", "ca"):
        assert counts[language, "test"] <= 30
        assert counts[language, "dev"] <= 20
        assert counts[language, "train"] > 0
    assert counts["ru", "test"] == 30 and counts["cs", "test"] == 30

    # sessions and voices of test are never heard in train
    units = {
        split: {by_id[i].unit for i, s in splits.items() if s == split and not by_id[i].synthetic}
        for split in SPLITS
    }
    assert not units["test"] & units["train"]
    ca_units = {
        split: {by_id[i].unit for i, s in splits.items() if s == split and i.startswith("ca")}
        for split in SPLITS
    }
    assert len(ca_units["test"]) == 1 and not ca_units["test"] & (ca_units["dev"] | ca_units["train"])
    # synthetic speech of a language with recordings only goes to train
    assert {splits[i] for i in splits if i.startswith("cs-tts")} == {"train"}


def test_small_languages_share_their_sentences_between_test_and_dev() -> None:
    items = [_candidate(f"mr-{n}", "mr", f"Sentence {n}.", "voice:one", synthetic=True) for n in range(77)]
    counts = Counter(assign_splits(items, max_dev=25, max_test=60).values())
    assert counts == {"test": 54, "dev": 22, "train": 1}


def test_limit_keeps_the_full_split_of_what_it_keeps() -> None:
    items = _pool()
    splits = assign_splits(items, max_dev=20, max_test=30)
    sliced = limit_per_language(items, splits, 5)
    assert Counter(item.language for item in items if item.id in sliced) == {"cs": 5, "ru": 5, "ca": 5}
    assert all(splits[id_] == split for id_, split in sliced.items())
    assert {"dev", "test", "train"} <= set(sliced.values())


def test_udhr_sentences_are_25_to_160_characters_and_deterministic() -> None:
    paragraph = (
        "Everyone has the right to freedom of thought, conscience and religion; this right includes freedom "
        "to change his religion or belief, and freedom, either alone or in community with others and in "
        "public or private, to manifest his religion or belief in teaching, practice, worship and observance."
        " Short one. Everyone has the right to rest and leisure, including reasonable limitation of working "
        "hours and periodic holidays with pay! Is this a question that is long enough?"
    )
    sentences = split_sentences(paragraph)
    assert sentences == split_sentences(paragraph)
    assert all(25 <= len(sentence) <= 160 for sentence in sentences)
    assert "Short one." not in sentences
    assert sentences[-1] == "Is this a question that is long enough?"
    assert sentences[0].startswith("Everyone has the right to freedom of thought, conscience and religion")
    assert not any(sentence.endswith((",", ";")) for sentence in sentences)
    assert len(sentences) >= 4


def test_asterisk_prompts_drop_silence_empty_and_conflicts_and_keep_text_exactly() -> None:
    listing = (
        "; Core Asterisk Sounds\n\n"
        "agent-alreadyon: That agent is already logged on.  Please enter your agent number.\n"
        "silence/1: (1 second of silence)\n"
        "silence/10: (10 seconds of silence)\n"
        "dir-welcome:\n"
        "digits/0: cero\n"
        "digits/0: diez\n"
        "letters/O: O\n"
    )
    assert parse_prompts(listing) == {
        "agent-alreadyon": "That agent is already logged on.  Please enter your agent number.",
        "letters/O": "O",
    }


def test_fillets_dialogs_pair_ids_with_their_translated_line() -> None:
    script = (
        'dialogId("war-v-pohadka", "font_big", "In C:\\\\WINDOWS we talk.")\n'
        'dialogStr("V adresáři C:\\\\WINDOWS si povídáme.")\n\n'
        'dialogId("m-uvedomit", "font_small",\n"You need to realize")\n'
        'dialogStr(\n"Musíš si \\"uvědomit\\"")\n'
        'dialogId("z-c-1", "", "")\ndialogStr("")\n'
    )
    lines = parse_dialogs(script)
    assert lines["war-v-pohadka"].text == "V adresáři C:\\WINDOWS si povídáme."
    assert lines["war-v-pohadka"].character == "big-fish"
    assert lines["m-uvedomit"].text == 'Musíš si "uvědomit"'
    assert lines["m-uvedomit"].character == "small-fish"
    assert lines["z-c-1"].text == ""


def test_flac_is_lossless_and_byte_identical(tmp_path: Path) -> None:
    samples = (np.sin(np.arange(8000) / 7.0) * 12000).astype(np.int16)
    write_flac(tmp_path / "a.flac", samples)
    write_flac(tmp_path / "b.flac", samples)
    assert (tmp_path / "a.flac").read_bytes() == (tmp_path / "b.flac").read_bytes()
    assert b"Lavf" not in (tmp_path / "a.flac").read_bytes()  # no encoder version in the file
    assert flac_samples(tmp_path / "a.flac") == 8000
    np.testing.assert_array_equal(read_flac(tmp_path / "a.flac"), samples.astype(np.float32) / 32768)


def _tiny_corpus(directory: Path) -> list[Record]:
    records = []
    for number, split in enumerate(("train", "dev", "test", "dev")):
        path = f"audio/xx/test/u{number}.flac"
        write_flac(directory / path, np.full(1600 * (number + 1), number * 100, dtype=np.int16))
        records.append(
            Record(
                f"u{number}",
                path,
                "xx",
                f"text «{number}»",
                0.1 * (number + 1),
                "test",
                "s",
                split,
                False,
                "CC0",
            )
        )
    write_index(directory, "tiny", records, {"made": "by a test"})
    return records


def test_reader_returns_what_was_written_and_refuses_a_broken_corpus(tmp_path: Path) -> None:
    records = _tiny_corpus(tmp_path / "tiny")
    corpus = Corpus.open(tmp_path / "tiny")
    assert corpus.id == "tiny" and corpus.languages == ("xx",)
    dev = corpus.utterances("dev", ["xx"])
    assert [u.id for u in dev] == ["u1", "u3"]
    assert dev[0].text == "text «1»" and dev[0].audio_path == (tmp_path / "tiny" / records[1].path).resolve()
    assert dev[0].load_audio().shape == (3200,)
    assert corpus.utterances("test", ["yy"]) == []
    corpus.verify()

    with pytest.raises(CorpusNotFoundError, match="corpora in it: tiny"):
        Corpus.open(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        corpus.utterances("validation")
    (tmp_path / "tiny" / records[0].path).write_bytes(b"not the audio")
    with pytest.raises(CorruptCorpusError, match="does not match"):
        Corpus.open(tmp_path / "tiny").verify()
    (tmp_path / "tiny" / "corpus.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(CorruptCorpusError):
        Corpus.open(tmp_path / "tiny")


def test_reserved_voices_are_never_used() -> None:
    assert not any(voice.name.startswith("mb") for voice in VOICES)  # espeak-ng's MBROLA voices
    assert not any(voice.language == "ru" for voice in VOICES)  # festvox-ru
    assert not any("festvox-ru" in package or "mbrola" in package for package in debian_packages())


def test_missing_system_packages_name_the_apt_get_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda command: None)
    monkeypatch.setattr(
        system_deps, "_installed", lambda package: package not in {"festvox-kallpc16k", "npm"}
    )
    with pytest.raises(SystemDepsMissingError) as caught:
        check_system_deps(["udhr-festival"])
    assert caught.value.missing == ("festvox-kallpc16k", "npm")
    assert caught.value.command == "apt-get install -y --no-install-recommends festvox-kallpc16k npm"
    check_system_deps(["asterisk"])  # apt and dpkg count as installed here


@pytest.fixture(scope="module")
def package_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("apt-get", "dpkg-deb", "npm", "espeak-ng"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the slice build needs Debian packages, npm and espeak-ng")
    return tmp_path_factory.mktemp("package-cache")


@pytest.mark.slow
def test_a_slice_builds_twice_to_the_same_sha256_and_reads_back(package_cache: Path, tmp_path: Path) -> None:
    def slice_build(out: Path) -> tuple[str, Path]:
        options = BuildOptions(
            out=out,
            cache=package_cache,
            languages=("ru", "sw"),
            sources=("asterisk", "udhr-espeak"),
            limit_per_language=3,
            jobs=2,
            progress=False,
        )
        try:
            result = build(options)
        except (DownloadError, SystemDepsMissingError) as error:
            pytest.skip(f"cannot build the slice here: {error}")
        return result.sha256, result.directory

    first_sha, first = slice_build(tmp_path / "one")
    second_sha, second = slice_build(tmp_path / "two")
    assert first_sha == second_sha
    assert first.name == second.name

    corpus = Corpus.open(first)
    assert corpus.sha256 == first_sha and corpus.languages == ("ru", "sw")
    corpus.verify()
    written = []
    for split in SPLITS:
        lines = (first / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        objects = [json.loads(line) for line in lines]
        assert all(list(item) == _JSONL_KEYS and item["split"] == split for item in objects)
        assert [item["id"] for item in objects] == sorted(item["id"] for item in objects)
        written += objects
        read = corpus.utterances(split)
        assert [Record(**item) for item in objects] == [
            Record(**{k: getattr(u, k) for k in _JSONL_KEYS}) for u in read
        ]
    assert Counter(item["language"] for item in written) == {"ru": 3, "sw": 3}
    assert {item["source"] for item in written if item["language"] == "sw"} == {"udhr-espeak"}
    for utterance in corpus.utterances("dev") + corpus.utterances("test"):
        audio = utterance.load_audio()
        assert audio.dtype == np.float32 and abs(audio.size / 16000 - utterance.duration) < 0.001
        assert np.abs(audio).max() > 0.01
