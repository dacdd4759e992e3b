"""What the rows of one static decode batch must share."""

import pytest

from model_store.window_decoding import WindowDecoding, shared_decoding

GREEDY = WindowDecoding(temperature=0.0, max_new_tokens=24, with_timestamps=False, repetition_limit=2.4)


def test_rows_that_differ_only_in_their_repetition_limit_step_together() -> None:
    unlimited = WindowDecoding(temperature=0.0, max_new_tokens=24, with_timestamps=False)
    assert GREEDY.steps_with(unlimited)
    assert GREEDY.shared() == unlimited  # what a static batch's key holds: no repetition limit
    assert shared_decoding([GREEDY, unlimited]) is GREEDY


@pytest.mark.parametrize(
    "other",
    [
        WindowDecoding(temperature=0.2, max_new_tokens=24, with_timestamps=False),
        WindowDecoding(temperature=0.0, max_new_tokens=12, with_timestamps=False),
        WindowDecoding(temperature=0.0, max_new_tokens=24, with_timestamps=True),
    ],
)
def test_rows_with_another_temperature_budget_or_mode_are_refused(other: WindowDecoding) -> None:
    assert not GREEDY.steps_with(other)
    with pytest.raises(ValueError, match="one temperature, token budget and timestamps mode"):
        shared_decoding([GREEDY, other])


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one window"):
        shared_decoding([])
