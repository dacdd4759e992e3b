"""The transcript normaliser, script by script, with the expected output written out."""

import pytest

from model_store.normalizer import normalize, raw


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ça va, Élodie?", "ça va élodie"),  # precomposed Latin letters keep their accents
        ("Cafe\u0301 au lait", "café au lait"),  # NFKC composes e + combining acute into é
        ("Привет, мир!", "привет мир"),
        ("молоко\u0301", "молоко"),  # a stress mark with no precomposed letter is dropped, not spaced
        ("Ἀθῆναι", "ἀθῆναι"),  # polytonic Greek is precomposed
    ],
)
def test_latin_greek_cyrillic(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_devanagari_keeps_vowel_signs_and_virama() -> None:
    # हिन्दी = ह + ि (vowel sign I, Mc) + न + ् (virama, Mn) + द + ी (vowel sign II, Mc)
    result = normalize("नमस्ते, दुनिया! हिन्दी।")  # । (danda) is punctuation
    assert result == "नमस्ते दुनिया हिन्दी"
    assert "\u093f" in result and "\u094d" in result


def test_tamil_keeps_vowel_signs_and_virama() -> None:
    # தமிழ் = த + ம + ி (vowel sign I, Mc) + ழ + ் (virama, Mn)
    result = normalize("வணக்கம், தமிழ் உலகம்!")
    assert result == "வணக்கம் தமிழ் உலகம்"
    assert "\u0bbf" in result and "\u0bcd" in result


def test_thai_keeps_vowel_and_tone_marks() -> None:
    assert normalize("สวัสดีครับ!") == "สวัสดีครับ"


def test_cjk_punctuation_becomes_a_space() -> None:
    assert normalize("你好，世界！") == "你好 世界"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("¿Qué tal, señor Muñoz?", "que tal senor munoz"),
        ("Pingüino ÁRBOL", "pinguino arbol"),
    ],
)
def test_spanish_strips_latin_diacritics(text: str, expected: str) -> None:
    assert normalize(text, "es") == expected


def test_spanish_rule_leaves_other_scripts_and_languages_alone() -> None:
    assert normalize("Йогурт हिन्दी", "es") == "йогурт हिन्दी"
    assert normalize("¿Qué?", "fr") == "qué"
    assert normalize("¿Qué?") == "qué"


def test_bracketed_and_parenthesised_text_is_removed() -> None:
    assert normalize("[MUSIC] Hello <unk> (laughs) world") == "hello world"


def test_symbols_and_punctuation_become_spaces() -> None:
    assert normalize("$5 + 3 = 8 €") == "5 3 8"
    assert normalize("don't stop—now") == "don t stop now"  # as in Whisper


def test_free_standing_marks_become_spaces() -> None:
    assert normalize("\u0301abc") == "abc"
    assert normalize("a1\u0301b") == "a1 b"  # a mark on a digit belongs to no letter


def test_compatibility_forms_are_folded() -> None:
    assert normalize("ﬁne ① ＡＢＣ") == "fine 1 abc"


def test_whitespace_is_collapsed_and_trimmed() -> None:
    assert normalize("  Hello \t\n  world!  ") == "hello world"


def test_nothing_left() -> None:
    assert normalize("[noise] ?!") == ""


def test_raw_only_collapses_whitespace() -> None:
    assert raw("  Hello,\n  World!\u3000 ") == "Hello, World!"
    assert raw("") == ""
