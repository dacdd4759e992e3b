"""Teacher-forced decoder sequences: one prompt for training, calibration and cached decoding."""

from __future__ import annotations

import torch

from compression.training.dataset import IGNORE, Example, decoder_sequences
from model_store.whisper_tokens import transcription_prompt
from tests.factories import multilingual_special_tokens

MULTILINGUAL = multilingual_special_tokens({"en": 50259, "de": 50261})
ENGLISH_ONLY = multilingual_special_tokens({})


def test_the_prompt_names_language_and_task_only_for_multilingual_models() -> None:
    assert transcription_prompt(MULTILINGUAL, "de") == [50258, 50261, 50359, 50363]
    assert transcription_prompt(ENGLISH_ONLY, "en") == [50258, 50363]


def test_labels_are_the_inputs_shifted_after_the_prompt_whatever_its_length() -> None:
    examples = [Example("a", "de", (10, 11, 12)), Example("b", "en", (20,))]
    for tokens in (MULTILINGUAL, ENGLISH_ONLY):
        inputs, labels = decoder_sequences(examples, tokens)
        prompt = len(transcription_prompt(tokens, "de"))
        assert inputs[0, :prompt].tolist() == transcription_prompt(tokens, "de")
        assert labels[0].tolist()[: prompt - 1] == [IGNORE] * (prompt - 1)  # the prompt predicts nothing
        assert labels[0, prompt - 1 : prompt + 3].tolist() == [10, 11, 12, tokens.eot]
        assert torch.equal(
            labels[0, prompt - 1 : prompt + 2], inputs[0, prompt : prompt + 3]
        )  # shifted by one
        assert labels[1, prompt - 1 :].tolist()[:2] == [20, tokens.eot]  # a shorter row, then padding
        assert (labels[1, prompt + 1 :] == IGNORE).all()


def test_long_texts_are_cut_to_the_decoder_context() -> None:
    long = Example("a", "en", tuple(range(1000, 1600)))
    for tokens in (MULTILINGUAL, ENGLISH_ONLY):
        inputs, labels = decoder_sequences([long], tokens, max_length=448)
        assert inputs.shape[1] == 448 and labels[0, -1].item() == tokens.eot
