"""Urgent wording: answers at once, with the emergency numbers, a question describing an emergency.

Copy this file to write your own guard. In ``bot.yaml``::

    plugins:
      - use: plugins.urgent_wording:UrgentWording
        rooms: ["#entraide:example.org"]   # optional; default: every intake room
        options:
          # More phrases that mean "emergency now" in your rooms (matched case- and
          # accent-insensitively, as whole words). They fire like the strong phrases below:
          # unless the text reads as the past or as an educational question.
          extra_patterns: ["fait un malaise", "hypo severe"]

The guard never blocks: it answers ``Verdict(PASS, notice=...)``, and the bot posts the notice in
the asker's thread before routing. The notice gives 15 (SAMU) and 112, adds 3114 (suicide
prevention, France) when the question is about suicide, and reminds that peer advice is not a
medical decision.

How it decides (:func:`assess_urgency`, pure): the text is folded (lower case, no accents, one
space between words), long words one typo away from a key word are corrected ("toracique"), then
topic phrases are looked for. *Strong* phrases say the emergency is happening ("ne respire plus",
"is not breathing", "veut se suicider"); they fire unless the question reads as educational
("conduite à tenir", "how to manage") or as the past ("antécédent", "il y a 3 semaines", "en
2019") near the phrase. *Weak* phrases name a topic ("douleur thoracique", "AVC", "chest pain");
they fire only with a cue of immediacy near them ("maintenant", "en ce moment", "depuis 10
minutes", "right now") and no past cue. Suicidal intent fires even in educational wording.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from peerbot.plugin_api import (
    Guard,
    GuardAction,
    PluginContext,
    PluginOptionError,
    Question,
    Verdict,
    fold,
)

__all__ = ["Urgency", "UrgentWording", "assess_urgency", "notice_for"]


@dataclass(frozen=True)
class Urgency:
    """Why a text reads as an emergency: its category and where the phrase is (folded text)."""

    category: str
    start: int
    end: int


# (category, strong?, pattern over folded text)
_TOPICS: tuple[tuple[str, bool, str], ...] = (
    # breathing
    ("breathing", True, r"ne respire (?:plus|pas|presque plus|quasiment plus)"),
    ("breathing", True, r"(?:respire|respiration) (?:plus|pas) du tout"),
    (
        "breathing",
        True,
        r"(?:is not|isn t|isnt|not|stopped|no longer|can t|cant|cannot) breath(?:e|ing)?",
    ),
    ("breathing", True, r"(?:arret|arrest) respiratoire|respiratory arrest"),
    ("breathing", True, r"s etouffe|suffoque|is choking|chokes"),
    (
        "breathing",
        False,
        r"detresse respiratoire|respiratory distress|dyspnee aigue|"
        r"manque d air|(?:short|shortness) of breath|struggling to breathe|etouffement",
    ),
    ("breathing", False, r"fausse route"),
    # unconscious
    (
        "unconscious",
        True,
        r"(?:est|patiente?|il|elle|retrouvee?|trouvee?|reste|semble|"
        r"devenue?|completement|totalement|toujours|encore|homme|femme|monsieur|madame) "
        r"inconsciente?|unconscious|unresponsive(?! to)|"
        r"ne (?:repond|reagit) plus|ne se reveille (?:pas|plus)|won t wake up|not waking up",
    ),
    (
        "unconscious",
        False,
        r"inconsciente?|perte de connaissance|malaise|passed out|collapsed|syncope",
    ),
    # cardiac arrest
    (
        "cardiac_arrest",
        True,
        r"(?:fait|fais|faire|en) (?:un )?arret cardi(?:aque|o respiratoire)|"
        r"(?:is|went) in(?:to)? cardiac arrest|pas de pouls|plus de pouls|no pulse|"
        r"pouls imprenable|massage cardiaque en cours",
    ),
    ("cardiac_arrest", False, r"acr|arret cardiaque|arret cardio respiratoire|cardiac arrest"),
    # suicide
    (
        "suicide",
        True,
        r"(?:veut|veux|va|voulait|menace de|envie de|pense a) (?:se|me|te) "
        r"(?:suicider|tuer|foutre en l air)|"
        r"idees? (?:suicidaires?|noires?)|projet suicidaire|envie d en finir|veut en finir|"
        r"(?:wants|want|going|plans|planning|threatening) to "
        r"(?:kill (?:him|her|them|my)sel[fv]e?s?|end (?:his|her|their|my) life)|"
        r"wants? to die|suicidal|kill myself",
    ),
    (
        "suicide",
        False,
        r"tentative de suicide|suicide|ts medicamenteuse|\bts\b|overdose|"
        r"intoxication medicamenteuse volontaire|a avale (?:toute?s?|une boite|la boite)",
    ),
    # bleeding
    (
        "bleeding",
        True,
        r"(?:hemorragie|saignement) (?:massi\w*|abondant\w*|importante?|"
        r"qui ne s arrete pas|incontrolable)|saigne (?:beaucoup|abondamment|enormement|"
        r"sans arret|de partout)|pisse le sang|(?:massive|uncontrolled|profuse) "
        r"(?:bleeding|ha?emorrhage)|bleeding (?:heavily|profusely|a lot|won t stop)",
    ),
    (
        "bleeding",
        False,
        r"hemorragie|ha?emorrhage|heavy bleeding|hemoptysie|hematemese|vomit du sang|"
        r"vomiting blood",
    ),
    # stroke
    (
        "stroke",
        True,
        r"avc en cours|bouche deviee|visage (?:paralyse|deforme|tombe)|"
        r"(?:ne parle plus|n arrive plus a parler) d un coup|face (?:is )?drooping|facial droop|"
        r"slurred speech|stroke in progress",
    ),
    (
        "stroke",
        False,
        r"avc|accident vasculaire|stroke|hemiplegie|aphasie|"
        r"ne parle plus|deficit moteur|paralysie",
    ),
    # chest pain
    (
        "chest_pain",
        False,
        r"douleurs? (?:thoraciques?|dans la poitrine|a la poitrine)|"
        r"mal (?:a|dans) la poitrine|oppression thoracique|serrement (?:dans la|a la) poitrine|"
        r"(?:chest|thoracic) (?:pain|tightness|pressure)|pain in (?:his|her|my|the) chest|sca|"
        r"infarctus|heart attack",
    ),
    # anaphylaxis
    (
        "anaphylaxis",
        True,
        r"choc anaphylactique|anaphylactic shock|gorge qui gonfle|"
        r"throat (?:is )?(?:swelling|closing)",
    ),
    ("anaphylaxis", False, r"oedeme de quincke|anaphyla\w*|angioedeme"),
    # seizure
    (
        "seizure",
        True,
        r"en train de convulser|convulse (?:depuis|encore|toujours)|"
        r"(?:is|keeps) (?:having a seizure|seizing|fitting)|crise qui ne s arrete pas",
    ),
    ("seizure", False, r"convuls\w*|crise d epilepsie|etat de mal|seizure|status epilepticus"),
)
_TOPIC_RES: tuple[tuple[str, bool, re.Pattern[str]], ...] = tuple(
    (cat, strong, re.compile(rf"\b(?:{pat})\b")) for cat, strong, pat in _TOPICS
)

_IMMEDIATE_RE = re.compile(
    r"\b(?:maintenant|en ce moment|actuellement|tout de suite|a l instant|en cours|"
    r"en train de|sur place|c est urgent|au secours|aidez moi|vite|"
    r"depuis (?:\d+|quelques|une|un|dix|quinze|vingt|trente) ?(?:min|mn|minutes?|h|heures?)|"
    r"depuis ce matin|depuis tout a l heure|ce matin|cette nuit|ce soir|"
    r"d un coup|right now|currently|at the moment|just now|ongoing|in progress|"
    r"(?:for|since) (?:the (?:last|past) )?(?:\d+|a few|ten|twenty|thirty) ?(?:min\w*|hours?)|"
    r"this morning|tonight|urgent|asap)\b"
)
# A sudden onset says "now" only right next to the symptom ("douleur thoracique brutale").
_ONSET_RE = re.compile(r"\b(?:brutal\w*|soudain\w*|sudden\w*)\b")
# "là" is a cue only with its accent ("la" is an article once folded).
_LA_RE = re.compile(r"(?<![\w-])là(?![\w-])")
_PAST_RE = re.compile(
    r"\b(?:antecedents?|atcds?|history of|hx of|h o|il y a \d+ (?:jours?|semaines?|mois|ans)|"
    r"\d+ (?:days?|weeks?|months?|years?) ago|ago|en (?:19|20)\d\d|in (?:19|20)\d\d|"
    r"l an dernier|last year|ancien(?:ne)?|old|sequelles?|aux? antecedents?|previous|prior|"
    r"recently|recemment|recent|survivors?|survivants?|"
    r"(?:for|since) (?:a|one|two|three|several|\d+) (?:days?|weeks?|months?|years?)|for years|"
    r"depuis (?:des|plusieurs|quelques|\d+) (?:jours|semaines|mois|ans|annees))\b"
)
_EDUCATIONAL_RE = re.compile(
    r"\b(?:conduite a tenir|cat (?:devant|face|en cas)|prise en charge (?:d|de|des|du)|"
    r"comment (?:prendre en charge|reconnaitre|evaluer|gerer|traiter|diagnostiquer)|"
    r"how (?:to|do you|should one) (?:manage|treat|recogni[sz]e|assess|diagnose)|"
    r"management of|guidelines?|recommandations?|protocole|cours|formation|quiz|exam\w*|"
    r"en consultation|differential|diagnostic differentiel|signs of|signes d|what are|"
    r"quels sont|quelles sont|definition|causes? of|causes? d|what causes|etiolog\w*|"
    r"risk factors?|facteurs? de risque|study|etude|prevalence|incidence|"
    r"in general|en general|habituellement|generally)\b"
)

# Key words worth correcting when mistyped (long enough to have no common neighbour).
_VOCAB: tuple[str, ...] = (
    "douleur",
    "thoracique",
    "thoraciques",
    "thoracic",
    "poitrine",
    "inconscient",
    "inconsciente",
    "unconscious",
    "unresponsive",
    "suicidaire",
    "suicidaires",
    "suicider",
    "suicidal",
    "hemorragie",
    "haemorrhage",
    "hemorrhage",
    "saignement",
    "bleeding",
    "breathing",
    "respiratoire",
    "anaphylactique",
    "anaphylactic",
    "convulser",
    "convulsions",
    "cardiaque",
    "maintenant",
    "actuellement",
    "oppression",
    "respiration",
)
_VOCAB_SET = frozenset(_VOCAB)


@lru_cache(maxsize=65536)
def _correct(token: str) -> str:
    """The key word this token is one typo (two for long words) away from, else the token."""
    if len(token) < 8 or token in _VOCAB_SET or not token.isalpha():
        return token
    limit = 1 if len(token) < 11 else 2
    best = process.extractOne(token, _VOCAB, scorer=Levenshtein.distance, score_cutoff=limit)
    return token if best is None else str(best[0])


def _normalise(text: str) -> str:
    return " ".join(_correct(t) for t in fold(text).split())


def _near(pattern: re.Pattern[str], text: str, start: int, end: int, reach: int) -> bool:
    return pattern.search(text[max(0, start - reach) : end + reach]) is not None


def assess_urgency(text: str, extra_patterns: Sequence[str] = ()) -> Urgency | None:
    """Whether the text describes an emergency now; suicide is reported before other topics."""
    folded = _normalise(text)
    educational = _EDUCATIONAL_RE.search(folded) is not None
    immediate_anywhere_la = _LA_RE.search(text.lower()) is not None
    hits: list[Urgency] = []
    extra = [fold(p) for p in extra_patterns if fold(p)]
    candidates: list[tuple[str, bool, re.Match[str]]] = []
    for phrase in extra:
        for m in re.finditer(rf"\b{re.escape(phrase)}\b", folded):
            candidates.append(("extra", True, m))
    for category, strong, regex in _TOPIC_RES:
        for m in regex.finditer(folded):
            candidates.append((category, strong, m))
    for category, strong, m in candidates:
        s, e = m.start(), m.end()
        if _near(_PAST_RE, folded, s, e, 40):
            continue
        immediate = (
            _near(_IMMEDIATE_RE, folded, s, e, 60)
            or _near(_ONSET_RE, folded, s, e, 12)
            or immediate_anywhere_la
        )
        fires = immediate or (strong and (not educational or category == "suicide"))
        if fires:
            hits.append(Urgency(category, s, e))
    if not hits:
        return None
    for hit in hits:
        if hit.category == "suicide":
            return hit
    return hits[0]


_NOTICES = {
    "fr": {
        "base": "⚠️ Si c'est une urgence en ce moment : appelez le 15 (SAMU) ou le 112.",
        "suicide": " Risque suicidaire : le 3114 (prévention du suicide) répond 24 h/24.",
        "reminder": " Les avis entre pairs ne remplacent pas une décision médicale.",
    },
    "en": {
        "base": "⚠️ If this is an emergency right now: call 15 (SAMU, France) or 112.",
        "suicide": " Suicide risk: 3114 (French suicide prevention line) answers 24/7.",
        "reminder": " Peer advice is not a medical decision.",
    },
}


def notice_for(urgency: Urgency, language: str) -> str:
    """The notice to post in the asker's thread, in the bot's language."""
    texts = _NOTICES.get(language, _NOTICES["en"])
    suicide = texts["suicide"] if urgency.category == "suicide" else ""
    return texts["base"] + suicide + texts["reminder"]


class UrgentWording(Guard):
    """Posts the emergency numbers at once when a question describes an emergency now."""

    def __init__(self, options: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(options, context)
        for option in options:
            if option != "extra_patterns":
                raise PluginOptionError(
                    str(option), "unknown option; the only option is 'extra_patterns'"
                )
        extra = options.get("extra_patterns", [])
        if not isinstance(extra, list | tuple) or not all(isinstance(p, str) for p in extra):
            raise PluginOptionError("extra_patterns", "must be a list of phrases (strings)")
        empty = [p for p in extra if not fold(p)]
        if empty:
            raise PluginOptionError("extra_patterns", f"has phrases with no words: {empty}")
        self.extra_patterns: tuple[str, ...] = tuple(extra)

    async def check(self, question: Question) -> Verdict:
        """Pass the question, with a notice when it reads as an emergency now."""
        urgency = assess_urgency(question.text, self.extra_patterns)
        if urgency is None:
            return Verdict(GuardAction.PASS)
        return Verdict(GuardAction.PASS, notice=notice_for(urgency, self.context.language))
