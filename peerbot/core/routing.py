"""Keyword rules and plugin proposals -> a routing decision with its reasons (pure).

Scores live in [0, 1] so that keyword rules and routers' proposals compare. A specialty's keyword
score combines its matched keywords as independent pieces of evidence, ``1 - prod(1 - w)``, where
an exact word counts 0.6, an exact phrase of several words 0.75 and a word matched despite a typo
0.45. One exact keyword scores 0.6, two score 0.84. The best score wins; ties go to the specialty
listed first in the configuration. No keyword and no proposal: the fallback (triage) room.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rapidfuzz.distance import Levenshtein

from peerbot.core.textnorm import tokens

__all__ = [
    "Decision",
    "KeywordHit",
    "Rule",
    "RuleSet",
    "decide",
]

EXACT_WORD = 0.6
EXACT_PHRASE = 0.75
FUZZY_WORD = 0.45
FUZZY_MIN_LENGTH = 6
"""Keywords shorter than this must match exactly: short words collide too easily."""


@dataclass(frozen=True)
class KeywordHit:
    """A keyword found in a question."""

    keyword: str
    found: str
    weight: float

    @property
    def exact(self) -> bool:
        """False when the keyword was matched despite a typo."""
        return self.weight != FUZZY_WORD


@dataclass(frozen=True)
class Rule:
    """A specialty as routing sees it: a name, a target room and keywords."""

    name: str
    room: str
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """One specialty's claim on a question."""

    name: str
    room: str
    score: float
    order: int
    hits: tuple[KeywordHit, ...] = ()
    reasons: tuple[str, ...] = ()
    """Plugin reasons (``"LearnedRouter: ..."``)."""


@dataclass(frozen=True)
class Decision:
    """Where a question goes and why."""

    room: str
    specialty: str | None
    """None: the fallback room."""
    score: float
    hits: tuple[KeywordHit, ...] = ()
    reasons: tuple[str, ...] = ()
    candidates: tuple[Candidate, ...] = field(default=(), repr=False)

    @property
    def is_fallback(self) -> bool:
        """True when nothing matched and the question goes to triage."""
        return self.specialty is None


def _plural_base(word: str) -> str:
    if len(word) > 3 and word[-1] in "sx":
        return word[:-1]
    return word


def _words_equal(a: str, b: str) -> bool:
    return a == b or _plural_base(a) == _plural_base(b)


def _fuzzy_equal(keyword: str, word: str) -> bool:
    """A small typo in a long enough word: 1 edit from 6 letters, 2 from 10."""
    if len(keyword) < FUZZY_MIN_LENGTH or abs(len(keyword) - len(word)) > 2:
        return False
    allowed = 1 if len(keyword) < 10 else 2
    if keyword[0] != word[0] and allowed == 1:
        return False
    return Levenshtein.distance(keyword, word, score_cutoff=allowed) <= allowed


@dataclass(frozen=True)
class _Compiled:
    keyword: str
    words: tuple[str, ...]


class RuleSet:
    """Rules compiled once for matching many questions."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._compiled: list[list[_Compiled]] = [
            [_Compiled(k, tuple(tokens(k))) for k in r.keywords if tokens(k)] for r in self.rules
        ]

    def match(self, text: str) -> list[list[KeywordHit]]:
        """For each rule (in order), the keywords found in the text."""
        words = tokens(text)
        return [self._match_rule(words, compiled) for compiled in self._compiled]

    @staticmethod
    def _match_rule(words: list[str], compiled: list[_Compiled]) -> list[KeywordHit]:
        hits: list[KeywordHit] = []
        for kw in compiled:
            n = len(kw.words)
            best: KeywordHit | None = None
            for i in range(len(words) - n + 1):
                window = words[i : i + n]
                if all(_words_equal(a, b) for a, b in zip(kw.words, window, strict=True)):
                    weight = EXACT_PHRASE if n > 1 else EXACT_WORD
                    best = KeywordHit(kw.keyword, " ".join(window), weight)
                    break
                if best is None and all(
                    _words_equal(a, b) or _fuzzy_equal(a, b)
                    for a, b in zip(kw.words, window, strict=True)
                ):
                    best = KeywordHit(kw.keyword, " ".join(window), FUZZY_WORD)
            if best is not None:
                hits.append(best)
        return hits


def combine(weights: Iterable[float]) -> float:
    """Independent pieces of evidence: 1 - prod(1 - w)."""
    missing = 1.0
    for w in weights:
        missing *= 1.0 - min(max(w, 0.0), 1.0)
    return 1.0 - missing


@dataclass(frozen=True)
class PluginProposal:
    """A router plugin's proposal, as the core hands it to :func:`decide`."""

    plugin: str
    specialty: str
    score: float
    reason: str


def decide(
    text: str,
    rules: RuleSet,
    fallback_room: str,
    proposals: Sequence[PluginProposal] = (),
) -> Decision:
    """Pick the room for a question: best keyword or plugin score, ties by config order."""
    matches = rules.match(text)
    by_name = {r.name.casefold(): i for i, r in enumerate(rules.rules)}
    plugin_best: dict[int, PluginProposal] = {}
    for p in proposals:
        i = by_name.get(p.specialty.casefold())
        if i is None or not 0.0 < p.score <= 1.0:
            continue
        if i not in plugin_best or p.score > plugin_best[i].score:
            plugin_best[i] = p
    candidates: list[Candidate] = []
    for i, rule in enumerate(rules.rules):
        hits = tuple(matches[i])
        kw_score = combine(h.weight for h in hits)
        prop = plugin_best.get(i)
        score = max(kw_score, prop.score if prop else 0.0)
        if score <= 0.0:
            continue
        reasons = (f"{prop.plugin}: {prop.reason}",) if prop else ()
        candidates.append(Candidate(rule.name, rule.room, score, i, hits, reasons))
    candidates.sort(key=lambda c: (-round(c.score, 9), c.order))
    if not candidates:
        return Decision(room=fallback_room, specialty=None, score=0.0)
    best = candidates[0]
    return Decision(
        room=best.room,
        specialty=best.name,
        score=best.score,
        hits=best.hits,
        reasons=best.reasons,
        candidates=tuple(candidates),
    )
