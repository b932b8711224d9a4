"""The routing benchmark's scores (bench/eval_routing.py)."""

from __future__ import annotations

import pytest

from bench.eval_routing import Row, macro_f1


def rows(*labels: str) -> list[Row]:
    return [Row(f"q{i}", label, frozenset({label})) for i, label in enumerate(labels)]


def test_macro_f1_weighs_every_label_alike() -> None:
    gold = rows("a", "a", "a", "b")
    # a: precision 1, recall 2/3 -> F1 0.8; b: precision 1/2, recall 1 -> F1 2/3.
    assert macro_f1(["a", "a", "b", "b"], gold) == pytest.approx((0.8 + 2 / 3) / 2)
    assert macro_f1(["a", "a", "a", "b"], gold) == 1.0
    # Always the majority label: 75 % accuracy, but label b scores 0.
    assert macro_f1(["a", "a", "a", "a"], gold) == pytest.approx((2 * 3 / 7) / 2)


def test_macro_f1_counts_no_answer_as_a_miss() -> None:
    assert macro_f1([None, "b"], rows("a", "b")) == pytest.approx(0.5)
    assert macro_f1([], []) == 0.0
