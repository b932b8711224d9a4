"""Patient-data guard: keeps what identifies a patient from leaving the room it was asked in.

Copy this file to write your own guard. In ``bot.yaml``::

    plugins:
      - use: plugins.patient_data_guard:PatientDataGuard
        rooms: ["#entraide:example.org"]   # optional; default: every intake room
        options:
          # What to do on a finding: "hold" (default) keeps the question until it is edited
          # clean or the asker confirms with !confirm; "edit" only asks for an edit.
          action: hold
          # Which kinds to look for (default: all of them):
          #   nir        French social security number, 13 digits + 2-digit key checked mod 97
          #              (Corsica 2A/2B included). A wrong or missing key is flagged only right
          #              after a cue such as "NIR", "sécu", "carte vitale".
          #   ins        "INS" / "INS-C" / "identifiant national de santé" followed by a long number
          #   phone      French phone numbers: 0X XX XX XX XX, +33 X .., 0033 X .. (spaces, dots,
          #              dashes or nothing between the pairs, the same separator throughout)
          #   email      e-mail addresses
          #   birthdate  a date (day and month at least) right after "né(e) le", "DDN",
          #              "date de naissance", "born", "DOB", "date of birth"; a bare date
          #              ("le 12/03/2024 ECG normal") or a year ("née en 1941") is not flagged
          #   name       a capitalised proper name after Mme, M., Madame, Monsieur, Mlle,
          #              Mademoiselle, Mr, Mrs, Ms, Miss, patient, patiente ("Mme Dupont",
          #              "M. LEGRAND", "Mme Le Goff"; not "Mme X", "Mme D.", "Mme 82 ans",
          #              "patient diabétique", "patient BPCO"). Names typed in lower case
          #              ("mme dupont") are missed: capitals are the only cheap signal.
          detect: [nir, ins, phone, email, birthdate, name]

The detection is the pure function :func:`find_patient_data`; the plugin only words the findings.
The bot's messages never quote what was found: a :class:`Finding` names the kind and says why it
matters, in the bot's language.

Doctors' names (Dr, Pr) are not flagged on purpose: they are public professional identities (the
RPPS directory), colleagues cite them all the time ("le protocole du Dr Martin"), and holding
those questions would teach people to ignore the guard.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from peerbot.plugin_api import (
    Finding,
    Guard,
    GuardAction,
    PluginContext,
    PluginOptionError,
    Question,
    Verdict,
    deaccent,
)

__all__ = ["KINDS", "Detection", "PatientDataGuard", "find_patient_data", "nir_key"]

KINDS: tuple[str, ...] = ("nir", "ins", "phone", "email", "birthdate", "name")
"""Every kind this guard can detect, in the order findings are reported."""


@dataclass(frozen=True)
class Detection:
    """One piece of patient data in a text: its kind and offsets (for tests, never shown)."""

    kind: str
    start: int
    end: int


# --------------------------------------------------------------------------------------------
# NIR and INS

_SEP = r"[ .\-\u00a0\u202f]?"
_NIR_RE = re.compile(
    rf"(?<![\w.,+])([1-478]){_SEP}(\d\d){_SEP}(\d\d){_SEP}(\d\d|2[AaBb]){_SEP}(\d\d\d){_SEP}"
    rf"(\d\d\d)(?:{_SEP}(\d\d))?(?!\w|[.,]\d)"
)
# A wrong or missing key still identifies someone when the writer says it is a NIR.
_NIR_CUE_RE = re.compile(
    r"\b(?:nir|secu|securite sociale|social security|ss|carte vitale|immatriculation|"
    r"matricule|numero social)\b[^0-9]{0,25}$"
)
_INS_RE = re.compile(
    r"(?:\bINS(?:[-\u2010 ]?(?:NIR|NIA|C))?\b|\b[Ii]dentifiant [Nn]ational de [Ss]ant[ée]\b)"
    r"[^\d\n]{0,30}?((?:\d[ .\-]?){9,}\d)(?!\d)"
)


def nir_key(first13: str) -> int:
    """The NIR control key of the first 13 characters (2A/2B count as 19/18)."""
    digits = first13.upper().replace("2A", "19").replace("2B", "18")
    return 97 - int(digits) % 97


def _nir_structure_ok(sex: str, month: str, dept: str, order: str) -> bool:
    """INSEE structure, kept pragmatic: sex, month (01-12, 20-42, 50-99), department, order."""
    m = int(month)
    if not (1 <= m <= 12 or 20 <= m <= 42 or 50 <= m <= 99):
        return False
    if dept.isdigit() and dept == "00":
        return False
    return sex in "123478" and order != "000"


def _find_nir(text: str) -> Iterator[Detection]:
    folded_prefix_cache: dict[int, str] = {}
    for m in _NIR_RE.finditer(text):
        sex, year, month, dept, commune, order, key = m.groups()
        if not _nir_structure_ok(sex, month, dept, order):
            continue
        body = sex + year + month + dept + commune + order
        if key is not None and 1 <= int(key) <= 97 and nir_key(body) == int(key):
            yield Detection("nir", m.start(), m.end())
            continue
        if m.start() not in folded_prefix_cache:
            folded_prefix_cache[m.start()] = deaccent(text[max(0, m.start() - 45) : m.start()])
        if _NIR_CUE_RE.search(folded_prefix_cache[m.start()].replace("°", " ")):
            yield Detection("nir", m.start(), m.end())


def _find_ins(text: str) -> Iterator[Detection]:
    for m in _INS_RE.finditer(text):
        yield Detection("ins", m.start(), m.end(1))


# --------------------------------------------------------------------------------------------
# Phone numbers and e-mail addresses

_PHONE_RE = re.compile(
    r"(?<![\w+])(?:(?:\+|00)[ \u00a0]?33[ .\-\u00a0]?(?:\(0\)[ .\-]?)?[1-9]|0[1-9])"
    r"(?P<sep>[ .\-\u00a0]?)\d\d(?:(?P=sep)\d\d){3}(?!\w|[.,]\d)"
)
_EMAIL_RE = re.compile(
    r"(?<![\w.+\-])[A-Za-z0-9][\w.+\-]*@[A-Za-z0-9](?:[\w\-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[\w\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b"
)


def _find_phone(text: str) -> Iterator[Detection]:
    for m in _PHONE_RE.finditer(text):
        yield Detection("phone", m.start(), m.end())


def _find_email(text: str) -> Iterator[Detection]:
    for m in _EMAIL_RE.finditer(text):
        yield Detection("email", m.start(), m.end())


# --------------------------------------------------------------------------------------------
# Dates of birth: a cue, then a date right after it

_BIRTH_CUE = (
    r"(?:\bn[ée]e?s?(?:\s?\(e\))?(?:\s+le)?"
    r"|\bDDN\b|\bdate\s+de\s+naissance\b|\bD\.?O\.?B\b\.?|\bdate\s+of\s+birth\b"
    r"|\bbirth\s?date\b|\bborn(?:\s+on)?)"
)
_FR_MONTHS = (
    r"janv(?:ier)?|f[ée]vr?(?:ier)?|mars|avr(?:il)?|mai|juin|juil(?:let)?|ao[uû]t|"
    r"sept?(?:embre)?|oct(?:obre)?|nov(?:embre)?|d[ée]c(?:embre)?"
)
_EN_MONTHS = (
    r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t|tember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
_DATE = (
    r"(?:(?P<d>\d{1,2})[/.\-](?P<m>\d{1,2})(?:[/.\-](?P<y>\d{4}|\d{2}))?(?![\d/])"
    r"|\d{4}-\d{2}-\d{2}\b"
    rf"|(?:1er|\d{{1,2}})\s+(?:{_FR_MONTHS})\b\.?(?:\s+\d{{4}})?"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{_EN_MONTHS})\b\.?,?(?:\s+\d{{4}})?"
    rf"|(?:{_EN_MONTHS})\b\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})"
)
_BIRTHDATE_RE = re.compile(rf"{_BIRTH_CUE}[\s:=\-–.,]{{0,4}}{_DATE}", re.IGNORECASE)


def _find_birthdate(text: str) -> Iterator[Detection]:
    for m in _BIRTHDATE_RE.finditer(text):
        day, month = m.group("d"), m.group("m")
        # dd/mm or mm/dd: one reading must be a real day and month.
        if day is not None and month is not None:
            a, b = int(day), int(month)
            if not ((1 <= a <= 31 and 1 <= b <= 12) or (1 <= b <= 31 and 1 <= a <= 12)):
                continue
        yield Detection("birthdate", m.start(), m.end())


# --------------------------------------------------------------------------------------------
# Names after a title

_UP = "A-ZÀ-ÖØ-Þ"
_LOW = "a-zà-öø-ÿ"
_CAP_WORD = rf"[{_UP}](?:['’][{_UP}])?[{_LOW}]+(?:-[{_UP}][{_LOW}]+)?"
_CAPS_WORD = rf"[{_UP}]{{2,}}(?:-[{_UP}]{{2,}})?"
# A word ends at a non-letter; "Smith's" keeps its possessive outside the name.
_NAME_WORD = rf"(?:{_CAP_WORD}|{_CAPS_WORD})(?:(?![\w'’])|(?=['’]s\b))"
# Capitalised particles start a surname ("Mme Le Goff", "M. De La Fontaine"); lower-case "le",
# "la" after a title are articles ("M. le médecin") and never match here.
_PARTICLES = r"(?:(?:Le|La|De|Du|Des|Van|Von|Di|Da|Del|Della|Mac)[ \u00a0]|[DL]['’])*"
_HONORIFIC = (
    r"(?:\b(?:[Mm]me|MME|[Mm]lle|MLLE|[Mm]adame|MADAME|[Mm]onsieur|MONSIEUR|[Mm]ademoiselle"
    r"|Mrs|Mr|Ms|Miss)\b\.?|(?<![\w.])M\.)"
)
_PATIENT = r"\b[Pp](?:atiente?|ATIENTE?)\b"
_NAME_RE = re.compile(
    rf"(?P<title>{_HONORIFIC}|{_PATIENT})[ \t\u00a0]+"
    rf"(?P<particles>{_PARTICLES})(?P<name>{_NAME_WORD}(?:[ \u00a0]{_NAME_WORD}){{0,2}})"
)

# Capitalised words that follow these titles without being a name: placeholders, titles,
# pronouns, and the adjectives, diseases and verbs that start a sentence or a heading.
_NOT_NAMES: frozenset[str] = frozenset(
    """
    x y z xx xxx untel unetelle lambda doe anonyme anonymous inconnu inconnue unknown nobody
    someone somebody anyone anybody everyone everybody he she it they who this that
    mme mlle m mr mrs ms miss madame monsieur mademoiselle dr docteur pr professeur
    patient patiente patients le la les l un une des du de d au aux ce cette mon ma notre votre
    the a an and or with without of for in on at to from by is was has had who which
    age agee ages aged elderly old young jeune vieux vieille adulte enfant bebe nourrisson
    mineur mineure majeur majeure senior homme femme male female man woman boy girl
    diabetique diabetic hypertendu hypertendue hypertensive hypertensif obese obesite
    cardiaque insuffisant insuffisante asthmatique epileptique dialyse dialysee greffe greffee
    tabagique fumeur fumeuse alcoolique dement demente confus confuse agite agitee
    allergique immunodeprime immunodeprimee enceinte pregnant chronique stable instable
    alzheimer parkinson parkinsonien parkinsonienne temoin covid positif positive negatif
    negative porteur porteuse atteint atteinte suivi suivie opere operee hospitalise
    hospitalisee admis admise sortant sortante entrant entrante transfere transferee decede
    decedee sorti sortie vu vue recu recue traite traitee sous avec sans chez
    nouveau nouvelle ancien ancienne habituel habituelle difficile agressif agressive
    douloureux douloureuse inconscient inconsciente palliatif palliative polymedique
    presente presents presented presenting admitted reports reported complains complaining
    denies states underwent referred seen diagnosed known has have had is was will would
    education information care safety rights records portal name nom prenom identity
    identite number numero dossier zero one two no non oui yes sir
    """.split()
)
# Medical acronyms that follow "patient" in capitals ("patient BPCO").
_ACRONYMS: frozenset[str] = frozenset(
    """
    bpco hta vih sida sep sla irc irct ira dt1 dt2 avk aod ald ehpad usld ssr had covid acfa
    aomi saos mici tdah tsa ide ivg ptg pth fa ic icc epp uhcd sau smur samu hiv copd chf ckd
    ami cva tia icu er ed dnr gp ms als adhd bph uti dvt pe
    """.split()
)


_LONG_WORD_RE = re.compile(rf"[{_UP}{_LOW}]{{4,}}")


class _TitleCase:
    """Whether most longer words outside a span are capitalised (a heading, not prose)."""

    def __init__(self, text: str) -> None:
        words = list(_LONG_WORD_RE.finditer(text))
        self.starts = [w.start() for w in words]
        # caps[i]: capitalised words among the first i.
        self.caps = [0]
        for w in words:
            self.caps.append(self.caps[-1] + w.group()[0].isupper())

    def outside(self, start: int, end: int) -> bool:
        i, j = bisect_left(self.starts, start), bisect_left(self.starts, end)
        total = len(self.starts) - (j - i)
        capitalised = self.caps[-1] - (self.caps[j] - self.caps[i])
        return total >= 3 and capitalised / total >= 0.6


def _find_name(text: str) -> Iterator[Detection]:
    title_case: _TitleCase | None = None
    for m in _NAME_RE.finditer(text):
        first = m.group("name").split()[0]
        key = deaccent(first).replace("’", "'")
        if key in _NOT_NAMES:
            continue
        is_caps = first.isupper()
        title = deaccent(m.group("title"))
        if is_caps and title.startswith("patient") and (key in _ACRONYMS or len(first) < 4):
            continue
        if is_caps and key in _ACRONYMS:
            continue
        if not is_caps:
            title_case = title_case or _TitleCase(text)
            if title_case.outside(m.start(), m.end()):
                continue
        yield Detection("name", m.start(), m.end())


# --------------------------------------------------------------------------------------------

_FINDERS = {
    "nir": _find_nir,
    "ins": _find_ins,
    "phone": _find_phone,
    "email": _find_email,
    "birthdate": _find_birthdate,
    "name": _find_name,
}


_SEARCH_ORDER = ("ins", "nir", "phone", "email", "birthdate", "name")


def find_patient_data(text: str, kinds: Collection[str] = KINDS) -> list[Detection]:
    """Every piece of patient data in ``text``, by position; an INS wins over the NIR inside it."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds: {sorted(unknown)}")
    # Kept sorted and non-overlapping, so a new span only needs its two neighbours checked.
    found: list[Detection] = []
    starts: list[int] = []
    # Order matters: a number labelled INS is also a valid NIR, and is reported as an INS.
    for kind in _SEARCH_ORDER:
        if kind not in kinds:
            continue
        for det in _FINDERS[kind](text):
            i = bisect_left(starts, det.start)
            if i > 0 and found[i - 1].end > det.start:
                continue
            if i < len(found) and found[i].start < det.end:
                continue
            found.insert(i, det)
            starts.insert(i, det.start)
    return found


# --------------------------------------------------------------------------------------------
# The plugin

_WHY_REMOVE = {
    "fr": "retirez-le avant que la question ne quitte ce salon",
    "en": "remove it before the question leaves this room",
}
_TEXTS: dict[str, dict[str, tuple[str, str]]] = {
    "fr": {
        "nir": (
            "un numéro de sécurité sociale (NIR)",
            f"il identifie le patient de façon unique ; {_WHY_REMOVE['fr']}",
        ),
        "ins": (
            "un identifiant national de santé (INS)",
            f"il identifie le patient de façon unique ; {_WHY_REMOVE['fr']}",
        ),
        "phone": (
            "un numéro de téléphone",
            f"il permet de retrouver le patient ou ses proches ; {_WHY_REMOVE['fr']}",
        ),
        "email": (
            "une adresse e-mail",
            f"elle permet de retrouver une personne ; {_WHY_REMOVE['fr']}",
        ),
        "birthdate": (
            "une date de naissance",
            "avec le lieu ou la maladie, elle suffit souvent à reconnaître le patient ; "
            "donnez plutôt son âge",
        ),
        "name": (
            "un nom de personne après un titre (Mme, M., patient…)",
            "le nom du patient ne doit pas quitter ce salon ; écrivez plutôt « Mme X, 82 ans »",
        ),
    },
    "en": {
        "nir": (
            "a French social security number (NIR)",
            f"it identifies the patient uniquely; {_WHY_REMOVE['en']}",
        ),
        "ins": (
            "a French national health identifier (INS)",
            f"it identifies the patient uniquely; {_WHY_REMOVE['en']}",
        ),
        "phone": (
            "a phone number",
            f"it leads to the patient or their family; {_WHY_REMOVE['en']}",
        ),
        "email": (
            "an e-mail address",
            f"it leads to a person; {_WHY_REMOVE['en']}",
        ),
        "birthdate": (
            "a date of birth",
            "together with a place or a condition it often singles the patient out; "
            "give their age instead",
        ),
        "name": (
            "a person's name after a title (Mrs, Mr, patient…)",
            "the patient's name must not leave this room; write “Mrs X, 82” instead",
        ),
    },
}

_OPTIONS = frozenset({"action", "detect"})


class PatientDataGuard(Guard):
    """Holds (or asks to edit) questions that carry data identifying a patient."""

    def __init__(self, options: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(options, context)
        for option in options:
            if option not in _OPTIONS:
                raise PluginOptionError(
                    str(option), f"unknown option; expected one of {sorted(_OPTIONS)}"
                )
        action = options.get("action", "hold")
        if action not in ("hold", "edit"):
            raise PluginOptionError("action", f"must be 'hold' or 'edit', not {action!r}")
        self.action = GuardAction(action)
        detect = options.get("detect", list(KINDS))
        if not isinstance(detect, list | tuple) or not all(isinstance(k, str) for k in detect):
            raise PluginOptionError("detect", "must be a list of kinds, e.g. [nir, phone]")
        unknown = [k for k in detect if k not in KINDS]
        if unknown:
            raise PluginOptionError(
                "detect", f"unknown kind(s) {unknown}; expected some of {list(KINDS)}"
            )
        if not detect:
            raise PluginOptionError("detect", "is empty; list at least one kind or remove it")
        self.kinds: frozenset[str] = frozenset(detect)
        self._texts = _TEXTS.get(context.language, _TEXTS["en"])

    async def check(self, question: Question) -> Verdict:
        """Pass a clean question; otherwise one finding per kind found, never quoting it."""
        found = {d.kind for d in find_patient_data(question.text, self.kinds)}
        if not found:
            return Verdict(GuardAction.PASS)
        findings = tuple(Finding(kind, *self._texts[kind]) for kind in KINDS if kind in found)
        return Verdict(self.action, findings=findings)
