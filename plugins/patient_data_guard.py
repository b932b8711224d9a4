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
          #              (Corsica 2A/2B, overseas 97x/98x written "971 12" or "97 112"). A wrong
          #              or missing key is flagged only right after a cue such as "NIR", "sécu",
          #              "carte vitale".
          #   ins        "INS" / "INS-C" / "identifiant national de santé" followed by a long number
          #   phone      French phone numbers: 0X XX XX XX XX, +33 X .., 0033 X .. (pairs with one
          #              separator throughout, or groups of 2-4 digits: "06 123 456 78"); 08
          #              numbers are services (0 800 ...) and are not flagged
          #   foreign_phone  a number another country's numbering plan says is valid, after + or
          #              00 ("+32 471 23 45 67", "00212 661 ..."), or North American in shape
          #              ("(617) 432-1187"); checked with the phonenumbers library
          #   email      e-mail addresses
          #   birthdate  a date (day and month at least) right after "né(e) le", "née", "DDN",
          #              "date de naissance", "born", "DOB", "date of birth"; after the short
          #              "DN" a year must follow ("DN 24/12/37"; not the DN4 score "DN 4/10");
          #              a bare date ("le 12/03/2024 ECG") or a year ("née en 1941") is not flagged
          #   name       a proper name after Mme, Mme., M., Madame, Monsieur, Mlle, Mr, Mrs, Ms,
          #              Miss, pte, Pt, patient(e) ("Mme Dupont", "M. LEGRAND", "Mme Le Goff",
          #              "ma patiente Durand"), also typed in lower case after a French title or
          #              Mr/Mrs ("mme. durand", "monsieur garnier", "ma patiente durand") unless
          #              the word reads as the sentence going on ("madame refuse la toilette",
          #              "mme âgée", "monsieur est tombé"); not "Mme X", "Mme 82 ans",
          #              "patient BPCO", "patiente Alzheimer"
          #   address    a French postal address: a number and a street ("14 rue des Lilas",
          #              "3 bis av. Foch"), or a postcode and a town ("69003 Lyon")
          #   record     a hospital record number after IPP, NDA, NIP, n° de dossier, n° de
          #              séjour, MRN, medical record number... (5 digits at least; not the drug
          #              class "IPP 40 mg")
          detect: [nir, ins, phone, foreign_phone, email, birthdate, name, address, record]

The detection is the pure function :func:`find_patient_data`; the plugin only words the findings.
The bot's messages never quote what was found: a :class:`Finding` names the kind and says why it
matters, in the bot's language.

Doctors' names (Dr, Pr) are not flagged on purpose: they are public professional identities (the
RPPS directory), colleagues cite them all the time ("le protocole du Dr Martin"), and holding
those questions would teach people to ignore the guard. Names typed in lower case are judged
from word lists and endings, so a surname that reads like an adverb or a participle
("monsieur clément", "mme marie") passes.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import phonenumbers
from phonenumbers import Leniency

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

KINDS: tuple[str, ...] = (
    "nir",
    "ins",
    "phone",
    "foreign_phone",
    "email",
    "birthdate",
    "name",
    "address",
    "record",
)
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
# Department and commune: 2 + 3 characters in mainland France and Corsica (75 112, 2A 004),
# 3 + 2 for the overseas departments and territories (971 12, 988 04), written either way.
_NIR_RE = re.compile(
    rf"(?<![\w.,+])([1-478]){_SEP}(\d\d){_SEP}(\d\d){_SEP}"
    rf"(?:(\d\d|2[AaBb]){_SEP}(\d\d\d)|(9[78]\d){_SEP}(\d\d)){_SEP}"
    rf"(\d\d\d)(?:{_SEP}(\d\d))?(?!\w|[.,]\d)"
)
# A wrong or missing key still identifies someone when the writer says it is a NIR.
_NIR_CUE_RE = re.compile(
    r"\b(?:nir|secu|securite sociale|social security|ss|carte vitale|immatriculation|"
    r"matricule|numero social)\b[^0-9]{0,25}$"
)
_INS_RE = re.compile(
    r"(?:\b(?i:ins)(?:[-\u2010 ]?(?i:nir|nia|c))?\b|\b(?i:identifiant national de sant[ée])\b)"
    r"[^\d\n]{0,30}?((?:(?:\d|2[AaBb])[ .\-]?){9,}\d)(?!\d)"
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
        sex, year, month, dept2, commune3, dept3, commune2, order, key = m.groups()
        dept = dept2 if dept2 is not None else dept3[:2]
        commune = commune3 if commune3 is not None else dept3[2] + commune2
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

# French numbers; 08 numbers are services (0 800 free lines, 089x), never a person's.
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:(?:\+|00)[ \u00a0]?33[ .\-\u00a0]?(?:\(0\)[ .\-]?)?[1-79]|0[1-79])"
    r"(?:(?P<sep>[ .\-\u00a0]?)\d\d(?:(?P=sep)\d\d){3}"
    r"|(?P<odd>(?:[ .\-\u00a0]?\d){8}))(?!\w|[.,]\d)"
)
# Another grouping of the eight digits after 0X is a phone number only if no group is a single
# digit ("06 123 456 78", not "0 5 1 2 ...").
_GROUPS_RE = re.compile(r"[ .\-\u00a0]")
# ... nor when it is a piece of a longer run of digit groups (a NIR with a wrong key, a lot).
_DIGIT_GROUP_BEFORE_RE = re.compile(r"\d[ .\-\u00a0]$")
_DIGIT_GROUP_AFTER_RE = re.compile(r"[ .\-\u00a0]\d")
# Cheap gates before the numbering-plan library is asked: an international prefix (+, 00),
# or a North American shape ((617) 432-1187, 617-432-1187) for English writers.
_INTL_GATE_RE = re.compile(r"(?<![\w+])(?:\+|00[ \u00a0]?)[1-9](?:[ .\-\u00a0]?\(?\d\)?){6}")
_NANP_GATE_RE = re.compile(r"(?<![\w(])(?:\(\d{3}\)[ \u00a0]?|\d{3}[ .\-])\d{3}[ .\-]\d{4}(?![\w])")
_PHONE_WINDOW = 32
# The library costs ~50 µs a call: a text full of "+" and digits gets this many at most.
_MAX_LIBRARY_CALLS = 30
_EMAIL_RE = re.compile(
    r"(?<![\w.+\-])[A-Za-z0-9][\w.+\-]*@[A-Za-z0-9](?:[\w\-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[\w\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b"
)


def _find_phone(text: str) -> Iterator[Detection]:
    # French numbers in international form that the pattern misses ("+336 12 34 56 78").
    for start, end, country in _library_numbers(text):
        if country == 33:
            yield Detection("phone", start, end)
    for m in _PHONE_RE.finditer(text):
        odd = m.group("odd")
        if odd is not None and (
            not _GROUPS_RE.match(odd)
            or any(len(g) < 2 for g in _GROUPS_RE.split(odd[1:]))
            or _DIGIT_GROUP_BEFORE_RE.search(text, 0, m.start())
            or _DIGIT_GROUP_AFTER_RE.match(text, m.end())
        ):
            continue
        yield Detection("phone", m.start(), m.end())


def _library_numbers(text: str) -> Iterator[tuple[int, int, int]]:
    """(start, end, country code) of each valid number the library finds at a gate."""
    # The library knows every country's numbering plan (lengths, valid prefixes), which no
    # hand-written pattern keeps up with; it is only asked where a gate matched, to stay fast.
    # It reads a window from each gate on, so digits just before (a NIR, a date) do not spoil
    # the match.
    gates = [(m.start(), "FR") for m in _INTL_GATE_RE.finditer(text)]
    gates += [(m.start(), "US") for m in _NANP_GATE_RE.finditer(text)]
    end = -1
    for start, region in sorted(gates)[:_MAX_LIBRARY_CALLS]:
        if start < end:
            continue
        window = text[start : start + _PHONE_WINDOW]
        for match in phonenumbers.PhoneNumberMatcher(window, region, Leniency.VALID):
            if match.start == 0:
                end = start + match.end
                yield start, end, match.number.country_code or 0
            break


def _find_foreign_phone(text: str) -> Iterator[Detection]:
    for start, end, country in _library_numbers(text):
        if country != 33:
            yield Detection("foreign_phone", start, end)


def _find_email(text: str) -> Iterator[Detection]:
    for m in _EMAIL_RE.finditer(text):
        yield Detection("email", m.start(), m.end())


# --------------------------------------------------------------------------------------------
# Dates of birth: a cue, then a date right after it

_BIRTH_CUE = (
    r"(?:\bn[ée]e?s?(?:\s?\(e\))?(?:\s+le)?"
    r"|\bD\.?D\.?N\b\.?|\bdate\s+(?:de\s+)?naiss(?:ance\b|\.|\b)|\bD\.?O\.?B\b\.?"
    r"|\bdate\s+of\s+birth\b|\bbirth\s?date\b|\bborn(?:\s+on)?)"
)
# "DN" alone is short and shared with the DN4 pain score ("DN 4/10"): a year must follow.
_SHORT_CUE = r"\bD\.?N\b\.?"
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
    r"|(?P<d2>\d{1,2}) (?P<m2>\d{1,2}) (?:19|20)\d\d\b"
    r"|\d{4}-\d{2}-\d{2}\b"
    rf"|(?:1er|\d{{1,2}})\s+(?:{_FR_MONTHS})\b\.?(?:\s+\d{{4}})?"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{_EN_MONTHS})\b\.?,?(?:\s+\d{{4}})?"
    rf"|(?:{_EN_MONTHS})\b\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"
    rf"|\d{{1,2}}[\-/](?:{_EN_MONTHS}|{_FR_MONTHS})[\-/](?:\d{{4}}|\d{{2}})\b)"
)
_DATE_WITH_YEAR = (
    r"(?:(?P<d>\d{1,2})[/.\-](?P<m>\d{1,2})[/.\-](?P<y>\d{4}|\d{2})(?![\d/])"
    r"|(?P<d2>\d{1,2}) (?P<m2>\d{1,2}) (?:19|20)\d\d\b"
    rf"|(?:1er|\d{{1,2}})\s+(?:{_FR_MONTHS})\b\.?\s+\d{{4}})"
)
_BIRTHDATE_RE = re.compile(rf"{_BIRTH_CUE}[\s:=\-–.,]{{0,4}}{_DATE}", re.IGNORECASE)
_SHORT_BIRTHDATE_RE = re.compile(rf"{_SHORT_CUE}[\s:=\-–.,]{{0,4}}{_DATE_WITH_YEAR}", re.IGNORECASE)


def _find_birthdate(text: str) -> Iterator[Detection]:
    for rx in (_BIRTHDATE_RE, _SHORT_BIRTHDATE_RE):
        for m in rx.finditer(text):
            day, month = m.group("d") or m.group("d2"), m.group("m") or m.group("m2")
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
_LOW_WORD = rf"[{_LOW}](?:['’][{_LOW}])?[{_LOW}]+(?:-[{_LOW}]{{2,}})?"
# A word ends at a non-letter; "Smith's" keeps its possessive outside the name.
_END = r"(?:(?![\w'’])|(?=['’]s\b))"
_NAME_WORD = rf"(?:{_CAP_WORD}|{_CAPS_WORD}){_END}"
# Capitalised particles start a surname ("Mme Le Goff", "M. De La Fontaine"); lower-case "le",
# "la" after a title are articles ("M. le médecin") and never match here.
_PARTICLES = (
    r"(?:(?:Le|La|De|Du|Des|Di|Da|Del|Della|Mac|Ben|(?:[Vv]an|[Vv]on)(?:[ \u00a0]de[rn]?)?)"
    rf"[ \u00a0]|[DLdl]['’](?=[{_UP}]))*"
)
# Titles after which a name may be typed in lower case ("mme. durand", "monsieur garnier").
# Not "ms" (multiple sclerosis), "miss" (a dose), "pt" (English notes: "pt refuses meds").
_HONORIFIC = (
    r"(?:\b(?:[Mm]me|MME|[Mm]lle|MLLE|[Mm]adame|MADAME|[Mm]onsieur|MONSIEUR|[Mm]ademoiselle"
    r"|MADEMOISELLE|[Mm]rs|MRS|[Mm]r|[Pp]te|PTE)\b\.?|(?<![\w.])[Mm]\.)"
)
# Not "MR", "MS" (magnetic resonance, multiple sclerosis), nor lower-case "ms", "miss", "pt".
_CAP_ONLY_TITLE = rf"(?:\b(?:Ms|Miss|Pt)\b\.?|(?<![\w.])M(?=[ \u00a0][{_UP}]))"
_CAP_ONLY_TITLES = frozenset({"ms", "miss", "pt"})
# A bare "M" is "Monsieur" ("M Dupuis"), except as the letter of a medical term ("pic M").
_LETTER_M_BEFORE_RE = re.compile(
    r"\b(?i:pic|prot[ée]ine|composante?|taille|vitamine|type|classe|antig[èe]ne|mode|onde|"
    r"stade|groupe|phase|gamme|format|lettre)[ \u00a0]+$"
)
_PATIENT = r"\b[Pp](?:atiente?|ATIENTE?)\b"
_NAME_RE = re.compile(
    rf"(?P<title>{_HONORIFIC}|{_CAP_ONLY_TITLE}|{_PATIENT})(?:[ \t\u00a0]+|(?<=\.))"
    rf"(?P<particles>{_PARTICLES})"
    rf"(?:(?P<name>{_NAME_WORD}(?:[ \u00a0]{_NAME_WORD}){{0,2}})|(?P<low>{_LOW_WORD}){_END})"
)
# Lower-case names after "patient(e)" only right after a determiner: "ma patiente durand".
_DETERMINER_BEFORE_RE = re.compile(r"\b(?i:le|la|ma|mon|notre|votre|cette|ce)\s+$")

# Capitalised words that follow these titles without being a name: placeholders, titles,
# pronouns, and the adjectives, diseases and verbs that start a sentence or a heading.
_NOT_NAMES: frozenset[str] = frozenset(
    """
    x y z xx xxx untel unetelle lambda doe anonyme anonymous inconnu inconnue unknown nobody
    someone somebody anyone anybody everyone everybody he she it they who this that
    mme mlle m mr mrs ms miss madame monsieur mademoiselle dr docteur pr professeur pte pt
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
# Eponymous diseases used as adjectives after "patient(e)" ("patiente Alzheimer").
_EPONYMS: frozenset[str] = frozenset(
    """
    crohn hodgkin horton cushing hashimoto basedow addison raynaud kahler biermer charcot
    huntington duchenne sjogren behcet wilson still paget verneuil lyme kawasaki marfan turner
    down asperger tourette menieres meniere willebrand waldenstrom whipple dupuytren guillain
    """.split()
)
# Words typed in lower case after a title that are not a name: French and English verbs,
# adjectives, pronouns and function words a care worker writes there ("madame refuse").
_NOT_LOWER_NAMES: frozenset[str] = _NOT_NAMES | frozenset(
    """
    est a ont sont etait avait fait va vient veut peut doit dit dort mange boit sort rentre
    refuse refusait tombe tombee chute chuté chutee pleure crie semble parait souffre vit reste
    souhaite demande presente presentait se s sa son ses elle il lui leur on ne n y en et ou
    mais donc car qui que qu quand si comme depuis pendant apres avant chez dans sur par pour
    vers contre entre tres plus moins bien mal deja encore toujours jamais aussi meme tout tous
    toute toutes rien pas point alors puis ici la-bas aujourd hier demain matin soir nuit
    appelle appele sonne marche bouge parle repond comprend reconnait tousse vomit saigne
    arrache fugue fugué erre deambule decede meurt dit-elle dit-il va-t-il a-t-il est-il
    avait-il ira sera serait aurait pourrait voudrait devrait faudrait
    bonjour bonsoir merci svp stp salut pardon excusez desole desolee ok oki okay
    hyper super assez vraiment plutot completement totalement parfois souvent rarement
    stable instable pale febrile apyretique sdf vih hiv somnolent conscient present absent violent
    ans an mois jours semaines heures kg cm fois dont ou lequel laquelle lesquels
    continue commence arrete essaie tente accepte prend porte garde perd ressent regarde ecoute
    attend cherche appelle necessite requiert beneficie passe retourne part quitte
    revient tient sait connait oublie confond entend voit sent pense croit raconte explique
    hurle frappe mord griffe rit sourit gemit respire crache transpire tremble glisse leve
    couche habille lave fume depend habite travaille conduit met rend devient redevient
    recommence aimerait souhaiterait voudrait pourrait semblait paraissait presentait avait
    etait allait faisait disait mangeait dormait buvait marchait parlait voulait pouvait
    devait refusait acceptait souffrait toussait vomissait saignait tombait chutait
    je tu nous vous ils elles moi toi eux soi celui celle ceux celles ci cela ceci ca
    i you we me him her us them my your his its our their mine yours
    x1 x2 agee age agé ages confus confuse desoriente desorientee algique algique dement
    deprime deprimee triste anxieux anxieuse calme agite agitee fatigue fatiguee somnolent
    somnolente diabetique dialyse dialysee sourd sourde aveugle grabataire alite alitee
    dependant dependante autonome seul seule veuf veuve marie mariee divorce divorcee
    le la les l un une des du de d au aux ce cet cette ces mon ma mes ton ta tes notre nos
    votre vos leurs quel quelle quels quelles lequel laquelle
    is was has had have does did will would can could should may might must shall
    refuses refused says said seems feels fell falls wants needs gets got keeps kept lives
    lived died dies takes took came comes went goes looks looked denies denied reports
    complains complained presents presented states stated underwent appears appeared
    the a an and or but with without of for in on at to from by as so not
    here there today yesterday tomorrow now also still again always never just only
    who whose whom which what when where why how
    """.split()
)
# Endings of French adjectives, participles, verbs and adverbs that surnames rarely have.
_ADJECTIVE_END_RE = re.compile(
    r"(?:ée|ées|és|ante?s?|entes?|iques?|eux|euses?|ives?|iles?|cardes?|ues?|ment|aient|ait)$"
)
# A masculine participle ("monsieur opéré hier") ends in -é; after a feminine title it would
# end in -ée, so there an -é is read as a name ("mme traoré").
_MASCULINE_TITLES = frozenset({"monsieur", "m.", "mr", "mr.", "patient"})
# Lower-case words right after the candidate that show it was a verb: its object follows
# ("madame garde la chambre", "monsieur porte une sonde"). Not "ce" ("mme x ce matin") nor
# "de" ("monsieur x de la chambre 4").
_OBJECT_AFTER_RE = re.compile(
    r"[ \u00a0]+(?:le|la|les|l['’]|un|une|des|du|son|sa|ses|leur|leurs|mes|nos|vos|pas|plus"
    r"|beaucoup|bien|mal|tr[eè]s|trop|peu|toujours|encore|souvent|tout|toute|tous|toutes)\b"
)
# "M." is also a genus ("M. tuberculosis", "M. avium"): Latin endings are not surnames there.
_LATIN_END_RE = re.compile(r"(?:us|um|ae|ii|is|ans|ens)$")
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


def _is_lower_name(word: str, title: str, text: str, title_start: int, end: int) -> bool:
    """Whether a lower-case word after a title reads as a surname, not as the sentence going on."""
    key = deaccent(word).replace("’", "'")
    first = re.split(r"['\-]", key)[0]
    if len(key) < 3 or key in _NOT_LOWER_NAMES or first in _NOT_LOWER_NAMES:
        return False
    if _ADJECTIVE_END_RE.search(word) or _OBJECT_AFTER_RE.match(text, end):
        return False
    if word.endswith("é") and title in _MASCULINE_TITLES:
        return False
    if title == "m." and _LATIN_END_RE.search(key):
        return False
    if title.startswith("patient"):
        return key not in _EPONYMS and bool(
            _DETERMINER_BEFORE_RE.search(text, max(0, title_start - 12), title_start)
        )
    return True


def _find_name(text: str) -> Iterator[Detection]:
    title_case: _TitleCase | None = None
    pos = 0
    while (m := _NAME_RE.search(text, pos)) is not None:
        # A rejected candidate may hide the next title ("ma pte mme rivière"): go on after
        # the title, not after the whole match.
        pos = m.end("title")
        title = deaccent(m.group("title"))
        if m.group("low") is not None:
            low = m.group("low")
            # "M.Lemoine" without a space, but not "m.room.message": a lower-case name is
            # typed after a space.
            if not text[m.end("title")].isspace():
                continue
            cap_only = title.rstrip(".") in _CAP_ONLY_TITLES or m.group("title") == "M"
            if cap_only or m.group("particles"):
                continue
            if not _is_lower_name(low, title, text, m.start(), m.end()):
                continue
            yield Detection("name", m.start(), m.end())
            pos = m.end()
            continue
        first = m.group("name").split()[0]
        key = deaccent(first).replace("’", "'")
        if key in _NOT_NAMES:
            continue
        if m.group("title") == "M" and _LETTER_M_BEFORE_RE.search(text, 0, m.start()):
            continue
        is_caps = first.isupper()
        is_patient = title.startswith(("patient", "pt"))
        if is_patient and key in _EPONYMS:
            continue
        if is_caps and is_patient and (key in _ACRONYMS or len(first) < 4):
            continue
        if is_caps and key in _ACRONYMS:
            continue
        if not is_caps:
            title_case = title_case or _TitleCase(text)
            if title_case.outside(m.start(), m.end()):
                continue
        yield Detection("name", m.start(), m.end())
        pos = m.end()


# --------------------------------------------------------------------------------------------
# Postal addresses

# Street types; the first group is followed by a name in any case ("12 rue victor hugo"),
# the second only by a capitalised one, because the word also means something else in care
# ("1 place disponible", "2 voies veineuses", "en cours").
_STREET_ANY = r"rue|bd|boulevard|blvd|impasse|imp|all[ée]e|faubourg|fbg"
_STREET_CAP = (
    r"avenue|av|ave|chemin|ch|place|pl|quai|cours|route|rte|voie|square|sq|passage|villa|"
    r"cit[ée]|r[ée]sidence|r[ée]s|lotissement|lot|hameau|lieu-dit|esplanade|promenade|"
    r"sentier|mail|parvis|mont[ée]e|traverse|clos|rond-point"
)
_STREET_PARTICLES = r"(?:(?i:de la|du|des|de|la|le|les|aux|au)\s+|(?i:de l['’]|d['’]|l['’])\s*)?"
_ADDRESS_RE = re.compile(
    r"(?<![\w,.\-/])\d{1,4}(?:\s?(?i:bis|ter|quater)\b|[A-Da-d]\b)?,?\s+"
    rf"(?:(?i:(?P<any>{_STREET_ANY}))|(?i:(?P<cap>{_STREET_CAP})))\.?\s+"
    rf"(?P<part>{_STREET_PARTICLES})(?P<word>[{_UP}{_LOW}\d][\w’'\-]*)"
)
# Postcode and town: 01-95, Corsica (20), overseas 971-976 and 984-989.
_POSTCODE_RE = re.compile(
    r"(?<![\w,.\-/])(?:(?:0[1-9]|[1-8]\d|9[0-5])\d{3}|97[1-6]\d\d|98[4-9]\d\d)"
    r"(?=[ \u00a0]+(?:CEDEX\s+)?"
    rf"(?P<town>(?:L[ea][ \u00a0]|Les[ \u00a0])?[{_UP}][{_LOW}]+(?:-[{_UP}{_LOW}][{_LOW}]*)*"
    rf"|[{_UP}]{{3,}}(?:-[{_UP}]+)*)\b)"
)
# Capitalised words that follow a five-digit count without being a town ("15000 Plaquettes").
_NOT_TOWNS: frozenset[str] = frozenset(
    """
    plaquettes leucocytes globules hematies lymphocytes neutrophiles cellules copies unites
    units ui iu ufc cfu mg ml kg mmol euros eur patients personnes habitants cas deces morts
    naissances femmes hommes enfants
    """.split()
)
# Lower-case words after a street type that are not a street name ("1 avenue thérapeutique").
_NOT_STREET_WORDS: frozenset[str] = frozenset(
    """
    de du des la le les et ou en a au aux un une pour par sur sous avec sans plus moins
    """.split()
)


def _find_address(text: str) -> Iterator[Detection]:
    for m in _ADDRESS_RE.finditer(text):
        word = m.group("word")
        # "rue du 8 Mai 1945", but not "2 cours de 3 heures".
        if m.group("cap") is not None and not word[0].isupper():
            continue
        if not m.group("part") and deaccent(word) in _NOT_STREET_WORDS:
            continue
        # "12 rue victor hugo" is an address, "1 rue bondée" is not.
        if not m.group("part") and not word[0].isupper() and _ADJECTIVE_END_RE.search(word):
            continue
        yield Detection("address", m.start(), m.end())
    for m in _POSTCODE_RE.finditer(text):
        town = m.group("town")
        if deaccent(town.split()[-1].split("-")[0]) in _NOT_TOWNS:
            continue
        yield Detection("address", m.start(), m.end("town"))


# --------------------------------------------------------------------------------------------
# Hospital record numbers

# A cue naming a record, then an identifier with enough digits. "IPP" is also the drug class
# (inhibiteur de la pompe à protons, "IPP 40 mg"): a dose has few digits and a unit after it.
_RECORD_CUE = (
    r"(?:\b(?i:ipp|nda|nip|mrn)\b(?:\s+(?i:du|de la|of the)\s+(?i:patiente?))?"
    r"|\b(?i:n[°o]|num(?:[ée]ro)?\.?|no\.?)\s*(?i:de\s+|d['’]\s*)?"
    r"(?i:dossier|s[ée]jour|patient|admission|venue|hospitalisation|entr[ée]e)\b"
    r"|\b(?i:dossier)(?:\s+(?i:patient|m[ée]dical))?\s*(?i:n[°o]\.?|num(?:[ée]ro)?\.?|#)"
    r"|\b(?i:dossier)(?=\s+[A-Za-z]?\d)"
    r"|\b(?i:(?:medical\s+)?record|hosp(?:ital)?\.?|chart|patient|case)\s*"
    r"(?i:number|no\b\.?|#|id\b)"
    r"|\b(?i:identifiant\s+(?:du\s+)?patient)\b"
    r"|\b(?i:medical\s+record)\b|\b(?i:chart)(?=\s*#))"
)
_RECORD_RE = re.compile(
    rf"{_RECORD_CUE}[\s:#=°n.]{{0,6}}(?P<id>(?=[A-Za-z0-9\-/]*\d)[A-Za-z0-9][A-Za-z0-9\-/]{{3,}})"
    r"(?![\w\-])(?!\s*(?i:mg|g|ml|ui|µg|mcg|%|mmol)\b)"
)
_MIN_RECORD_DIGITS = 5


def _find_record(text: str) -> Iterator[Detection]:
    for m in _RECORD_RE.finditer(text):
        ident = m.group("id")
        if sum(c.isdigit() for c in ident) < _MIN_RECORD_DIGITS:
            continue
        yield Detection("record", m.start(), m.end("id"))


# --------------------------------------------------------------------------------------------

_FINDERS = {
    "nir": _find_nir,
    "ins": _find_ins,
    "phone": _find_phone,
    "foreign_phone": _find_foreign_phone,
    "email": _find_email,
    "birthdate": _find_birthdate,
    "name": _find_name,
    "address": _find_address,
    "record": _find_record,
}


# Order matters: a number labelled INS is also a valid NIR and is reported as an INS; a number
# labelled IPP may look like a phone number and is reported as a record; "+225 07 07 12 34 56"
# is a foreign number, not the French one inside it.
_SEARCH_ORDER = (
    "ins",
    "record",
    "nir",
    "foreign_phone",
    "phone",
    "email",
    "birthdate",
    "address",
    "name",
)


def find_patient_data(text: str, kinds: Collection[str] = KINDS) -> list[Detection]:
    """Every piece of patient data in ``text``, by position; an INS wins over the NIR inside it."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds: {sorted(unknown)}")
    # Kept sorted and non-overlapping, so a new span only needs its two neighbours checked.
    found: list[Detection] = []
    starts: list[int] = []
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
        "foreign_phone": (
            "un numéro de téléphone étranger",
            f"il permet de retrouver le patient ou ses proches ; {_WHY_REMOVE['fr']}",
        ),
        "address": (
            "une adresse postale",
            "elle mène au domicile du patient ; si le lieu compte, donnez plutôt le secteur",
        ),
        "record": (
            "un numéro de dossier hospitalier (IPP, NDA, n° de dossier…)",
            f"il désigne le patient dans le dossier de l'établissement ; {_WHY_REMOVE['fr']}",
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
        "foreign_phone": (
            "a foreign phone number",
            f"it leads to the patient or their family; {_WHY_REMOVE['en']}",
        ),
        "address": (
            "a postal address",
            "it leads to the patient's home; if the place matters, give the area instead",
        ),
        "record": (
            "a hospital record number (MRN, IPP, case number…)",
            f"it points to the patient in the hospital's records; {_WHY_REMOVE['en']}",
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
