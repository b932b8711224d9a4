"""The stacked blends measured by bench/cv_routing.py (its conditional logit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.cv_routing import _fit_conditional_logit, _stack_inputs


def _centred(scores: np.ndarray) -> np.ndarray:
    return scores - scores.mean(axis=1, keepdims=True)


def test_the_conditional_logit_ignores_a_scorer_that_is_pure_noise() -> None:
    rng = np.random.default_rng(0)
    n, k = 600, 5
    gold = rng.integers(0, k, n)
    useful = rng.normal(size=(n, k))
    useful[np.arange(n), gold] += 1.5
    noise = rng.normal(size=(n, k))
    x, present = _stack_inputs([_centred(useful), _centred(noise)], [1.0, 1.0], [1.0, 1.0], False)
    weights, biases = _fit_conditional_logit(x, present, gold, 1.0)
    assert weights[0] > 1.0
    assert abs(weights[1]) < 0.15
    assert biases.shape == (k,)


def test_the_conditional_logit_learns_a_class_bias_and_skips_absent_classes() -> None:
    rng = np.random.default_rng(1)
    n, k = 900, 3
    # Class 2 is gold four times as often as the others, with an uninformative scorer.
    gold = rng.choice(k, size=n, p=[1 / 6, 1 / 6, 2 / 3])
    scores = rng.normal(size=(n, k))
    x, present = _stack_inputs([_centred(scores)], [1.0], [1.0], False)
    present[:10, 0] = False  # A class absent from these rows' fold: out of their softmax.
    _, biases = _fit_conditional_logit(x, present, gold, 1.0)
    assert biases[2] > biases[0] + 1.0
    assert biases[2] > biases[1] + 1.0


def test_top_votes_adds_the_ten_nearest_rows_votes_by_similarity_to_a_power() -> None:
    from bench.cv_routing import _top_votes

    # One query, twelve rows: the two least similar rows (0.0, 0.05) are not among the ten.
    sims = np.array([[0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]])
    votes = np.eye(2)[[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]]
    got = _top_votes(sims, votes, power=2)
    assert np.allclose(got, [[sum(v**2 for v in sims[0, 2:11]), 1.0]])


def test_the_other_kinds_of_model_each_rank_separable_questions() -> None:
    """Each candidate of cv_routing's table returns float scores, one column per class, that
    pick the right class of questions whose words and vectors both tell them apart."""
    from bench.cv_routing import NONLINEAR, _nonlinear_scores
    from plugins import learned_model

    rng = np.random.default_rng(2)
    words = [["rein", "dialyse", "créatinine"], ["coeur", "ecg", "tachycardie"], ["peau", "eczéma"]]
    k, n = 3, 150
    labels = rng.permutation(np.arange(n) % k)
    texts = [
        " ".join(rng.choice(words[c], 2)) + f" question {i} patient suivi"
        for i, c in enumerate(labels)
    ]
    centres = rng.normal(size=(k, 32))
    vectors = (centres[labels] + 0.3 * rng.normal(size=(n, 32))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tr, te = np.arange(0, n, 3).tolist() + np.arange(1, n, 3).tolist(), np.arange(2, n, 3)
    tr = np.array(sorted(tr))
    features, sparse_tr, _ = learned_model.Features.fit([texts[i] for i in tr], None)
    sparse_te, _ = features.transform([texts[i] for i in te])
    out = _nonlinear_scores(
        sparse_tr, sparse_te, vectors[tr], vectors[te], labels[tr], k, texts, tr, te
    )
    assert set(out) == set(NONLINEAR)
    for name, scores in out.items():
        assert scores.shape == (te.size, k), name
        assert scores.dtype == np.float64, name  # An int array would truncate the margins.
        assert (scores.argmax(axis=1) == labels[te]).mean() > 0.9, name


def test_the_grid_scores_every_setting_and_the_plugins_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On questions one word tells apart, with vectors that say nothing, the more a setting
    weighs the vectors the more it loses to the TF-IDF baseline; the plugin's setting is
    printed with its rank."""
    import json

    from bench.cv_routing import GRID, PLUGIN_SETTING, grid_search, print_grid
    from plugins import learned_model

    rng = np.random.default_rng(3)
    words = ["rein", "coeur", "peau"]
    with (tmp_path / "routing_eval.jsonl").open("w", encoding="utf-8") as out:
        for i in range(90):
            label = words[i % 3]
            text = f"{label} question {rng.integers(1000)} suivi"
            out.write(json.dumps({"text": text, "label": label, "split": "train"}) + "\n")

    def encode(texts: list[str]) -> np.ndarray:
        return np.random.default_rng(len(texts)).normal(size=(len(texts), 8))

    gains = grid_search(tmp_path, learned_model.SentenceEmbedder("noise", encode))
    assert len(gains) == int(np.prod([len(v) for v in GRID.values()]))

    def gain(head_weight: float, neighbour_weight: float) -> float:
        return gains[(0.5, 0.25, 1.0, head_weight, 10, 1, neighbour_weight)]

    assert gain(0.5, 0.25) > gain(1.0, 0.25) > gain(1.5, 0.25)
    assert gain(1.0, 0.25) > gain(1.0, 1.0)
    assert gains[PLUGIN_SETTING] == gain(1.0, 0.25) < 0
    print_grid({"set": gains})
    printed = capsys.readouterr().out
    assert "the plugin's setting ranks" in printed and str(PLUGIN_SETTING) in printed
