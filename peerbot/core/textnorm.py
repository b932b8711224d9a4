"""French/English text normalisation shared by routing and matching (pure)."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["STOPWORDS", "content_tokens", "deaccent", "fold", "tokens"]

_NON_WORD = re.compile(r"[^0-9a-z]+")

# Letters that NFKD does not decompose into a base letter plus accents.
_SPECIAL = str.maketrans(
    {"œ": "oe", "æ": "ae", "ß": "ss", "ø": "o", "đ": "d", "ł": "l", "ı": "i", "’": "'"}
)

STOPWORDS: frozenset[str] = frozenset(
    """
    a ai aie aient aies ait al alors au aucun aussi autre aux avec avez avoir avons c ca car ce
    ceci cela celle celles celui ces cet cette ceux chez comme comment d dans de des deja depuis
    donc dont du elle elles en encore est et etc ete etre eu faut fait faire il ils j je jusqu l la
    le les leur leurs lui m ma mais me meme mes moi mon n ne ni nos notre nous on ont ou par pas
    peu peut plus pour pourquoi qu quand que quel quelle quelles quels qui quoi s sa sans se ses
    si sil son sont sous suis sur t ta te tes toi ton tous tout toute toutes tres tu un une vos
    votre vous y
    about after again against all am an and any are as at be been before being below between
    both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me
    more most my myself no nor not now of off on once only or other our ours out over own same
    she should so some such than that the their theirs them then there these they this those
    through to too under until up very was we were what when where which while who whom why will
    with would you your yours
    """.split()
)


def deaccent(text: str) -> str:
    """Lower-case and strip accents, keeping punctuation (for hashtags and commands)."""
    decomposed = unicodedata.normalize("NFKD", text.lower().translate(_SPECIAL))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def fold(text: str) -> str:
    """Lower-case, strip accents, turn every non-alphanumeric run into one space."""
    # Not cached: a cache would keep the text of questions after their authors deleted them.
    return _NON_WORD.sub(" ", deaccent(text)).strip()


def tokens(text: str) -> list[str]:
    """The folded words of a text, in order."""
    return fold(text).split()


def content_tokens(text: str) -> list[str]:
    """The folded words of a text without French and English stop words."""
    return [t for t in tokens(text) if t not in STOPWORDS]
