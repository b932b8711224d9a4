"""The stacked blends measured by bench/cv_routing.py (its conditional logit)."""

from __future__ import annotations

import numpy as np

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
