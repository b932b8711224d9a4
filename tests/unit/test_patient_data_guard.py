"""Patient-data guard: detection of each kind, tricky negatives, the verdict and the options."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from peerbot.plugin_api import GuardAction, PluginContext, PluginOptionError, Question
from plugins.patient_data_guard import KINDS, PatientDataGuard, find_patient_data, nir_key

TESTSET = Path(__file__).resolve().parents[2] / "bench" / "guard_testset.jsonl"


def _ctx(tmp_path: Path, language: str = "fr") -> PluginContext:
    return PluginContext(language=language, data_dir=tmp_path, logger=logging.getLogger("t"))


def _q(text: str) -> Question:
    return Question(text=text, room_id="!r:example.org", sender="@a:example.org", event_id="$e")


def _kinds(text: str) -> set[str]:
    return {d.kind for d in find_patient_data(text)}


def _spans(text: str, kind: str) -> list[str]:
    return [text[d.start : d.end] for d in find_patient_data(text) if d.kind == kind]


# ---------------------------------------------------------------------------------------- NIR


def test_nir_key_matches_insee_rule() -> None:
    """Key = 97 - (number mod 97), with 2A/2B read as 19/18."""
    assert nir_key("2410375112034") == 86
    assert nir_key("279082A123045") == 97 - int("2790819123045") % 97
    assert nir_key("185052B004123") == 97 - int("1850518004123") % 97


@pytest.mark.parametrize(
    "nir",
    [
        "2 41 03 75 112 034 86",
        "241037511203486",
        "2.41.03.75.112.034.86",
        "2-41-03-75-112-034-86",
        "2 79 08 2A 123 045 57",
        "1 85 05 2B 004 123 83",
        "3 99 05 99 123 456 94",
    ],
)
def test_valid_nir_is_found_with_its_exact_span(nir: str) -> None:
    """A NIR with a good key is found in any usual grouping, and the span is the number."""
    text = f"Bonjour, le n° {nir} pose problème à la CPAM"
    assert _spans(text, "nir") == [nir]


def test_wrong_key_is_not_a_nir_without_a_cue() -> None:
    """A 15-digit number whose key is wrong is not flagged (false positives cost trust)."""
    assert "nir" not in _kinds("Référence 1 85 05 78 006 084 36 du colis de pansements")


def test_wrong_or_missing_key_after_a_nir_cue_is_flagged() -> None:
    """After "sécu" or "NIR" the writer says what it is: a typo in the key still identifies."""
    assert "nir" in _kinds("n° sécu 1 85 05 78 006 084 36")
    assert "nir" in _kinds("NIR : 1 85 05 78 006 084 sans la clé")


def test_impossible_structure_is_not_a_nir() -> None:
    """Month 13 or sex digit 5 is not a NIR, even with a matching key."""
    body = "1851378006084"
    assert "nir" not in _kinds(f"{body}{nir_key(body):02d}")
    body = "5850578006084"
    assert "nir" not in _kinds(f"{body}{nir_key(body):02d}")


# ---------------------------------------------------------------------------------------- INS


def test_ins_c_and_labelled_ins_are_found_as_ins() -> None:
    """An INS label followed by a long number is an INS, reported once (not also as a NIR)."""
    assert _kinds("INS-C 0154872369541236987452 dans le DMP") == {"ins"}
    assert _kinds("INS : 2 83 01 45 067 089 04") == {"ins"}
    assert _kinds("insuline 14 UI le soir") == set()


# -------------------------------------------------------------------------------------- phone


@pytest.mark.parametrize(
    "phone",
    [
        "06 12 34 56 78",
        "06.12.34.56.78",
        "0612345678",
        "+33 6 12 34 56 78",
        "+33612345678",
        "0033 7 12 45 89 63",
        "03-20-45-67-89",
        "+33 (0)6 12 34 56 78",
    ],
)
def test_french_phone_numbers(phone: str) -> None:
    """French numbers in their usual shapes are found, span included."""
    assert _spans(f"appeler le {phone} demain", "phone") == [phone]


@pytest.mark.parametrize(
    "text",
    [
        "K+ 5,2 mmol/L, créat 145 µmol/L",
        "amoxicilline 1 g x 3/j pendant 7 jours",
        "QTc 480 ms, FC 110/min, PR 0,20 s",
        "Glycémies 06h00 1,20 ; 12h00 1,85 ; 18h00 2,40",
        "Numéro RPPS 10003456789",
        "appelez le 15 ou le 112",
        "TA 14/8, 15/9, 16/9 sur 3 jours",
        "0,5 mg puis 0,75 mg puis 1 mg",
        "06 12 34 56",
    ],
)
def test_numbers_that_are_not_phones(text: str) -> None:
    """Lab values, doses, ECG figures, short numbers and emergency numbers are not phones."""
    assert "phone" not in _kinds(text)


# -------------------------------------------------------------------------------------- email


def test_email_addresses() -> None:
    """E-mail addresses are found; an @mention-like word is not."""
    assert _spans("écrire à jean.dupont72@gmail.com svp", "email") == ["jean.dupont72@gmail.com"]
    assert "email" not in _kinds("demander à @marie:example.org sur Matrix")


# ---------------------------------------------------------------------------------- birthdate


@pytest.mark.parametrize(
    "text",
    [
        "née le 12/03/1941",
        "DDN 12.03.41",
        "date de naissance : 3 mars 1941",
        "born 03/12/1941",
        "né le 1er janvier 1950",
        "DOB: 1938-07-14",
        "Born March 3, 1941",
    ],
)
def test_birthdates(text: str) -> None:
    """A full date right after a birth cue is a date of birth."""
    assert _kinds(f"Patiente {text}, chute") == {"birthdate"}


@pytest.mark.parametrize(
    "text",
    [
        "douleur depuis le 12/03",
        "le 12/03/2024 ECG normal",
        "née en 1941",
        "born at 32 weeks",
        "nouveau protocole du 2026-02-14",
        "née prématurée à 28 SA",
    ],
)
def test_dates_that_are_not_birthdates(text: str) -> None:
    """Exam dates, years and gestational ages are not dates of birth."""
    assert "birthdate" not in _kinds(text)


# --------------------------------------------------------------------------------------- name


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Mme Dupont, 82 ans, sous AVK", "Mme Dupont"),
        ("la patiente Martin Claire refuse", "patiente Martin Claire"),
        ("M. LEGRAND a fait un malaise", "M. LEGRAND"),
        ("Mme Le Goff refuse son insuline", "Mme Le Goff"),
        ("Mr Smith's wound", "Mr Smith"),
        ("Madame Martin-Dubois a une plaie", "Madame Martin-Dubois"),
    ],
)
def test_names_after_titles(text: str, name: str) -> None:
    """A capitalised name after a title is found; the span is title and name."""
    assert _spans(text, "name") == [name]


@pytest.mark.parametrize(
    "text",
    [
        "Mme 82 ans, démence",
        "patiente de 82 ans",
        "patient diabétique sous metformine",
        "M. le médecin traitant",
        "patient hypertendu",
        "Mme X, 70 ans",
        "Mme D., 88 ans",
        "Monsieur Untel demande un certificat",
        "Patient BPCO sous O2",
        "La patiente Parkinsonienne chute",
        "Dr Martin conseille l'apixaban",
        "Patient Presents With Chest Pain And Fever",
        "I saw white things in my b.M. But not always",
    ],
)
def test_not_names(text: str) -> None:
    """Ages, adjectives, articles, placeholders, acronyms, doctors and title case: no name."""
    assert "name" not in _kinds(text)


# ------------------------------------------------------------------------------ labelled set


def _load(split: str) -> list[tuple[str, set[str]]]:
    rows = [json.loads(line) for line in TESTSET.read_text("utf-8").splitlines() if line]
    return [(r["text"], set(r["kinds"])) for r in rows if r["split"] == split]


@pytest.mark.parametrize(("split", "floor"), [("dev", 0.97), ("heldout", 0.9)])
def test_labelled_set_precision_and_recall(split: str, floor: float) -> None:
    """Micro precision and recall over kinds stay above a floor on each split."""
    tp = fp = fn = 0
    for text, gold in _load(split):
        pred = _kinds(text)
        tp += len(gold & pred)
        fp += len(pred - gold)
        fn += len(gold - pred)
    assert tp / (tp + fp) >= floor
    assert tp / (tp + fn) >= floor


def test_labelled_set_is_large_and_mixed() -> None:
    """The set keeps enough positives of each kind and many negatives."""
    rows = _load("dev") + _load("heldout")
    assert len(rows) >= 150
    assert sum(1 for _, k in rows if not k) >= 80
    for kind in KINDS:
        assert sum(1 for _, k in rows if kind in k) >= 3, kind


# ----------------------------------------------------------------------------------- plugin


async def test_clean_question_passes(tmp_path: Path) -> None:
    """No finding: PASS with nothing attached."""
    guard = PatientDataGuard({}, _ctx(tmp_path))
    verdict = await guard.check(_q("K+ 5,2 sous IEC, on arrête ?"))
    assert verdict.action is GuardAction.PASS
    assert verdict.findings == ()


async def test_findings_one_per_kind_never_quote_the_text(tmp_path: Path) -> None:
    """Default action is hold; one finding per kind; labels and reasons never quote the data."""
    text = "Mme Garnier (2 41 03 75 112 034 86), tél 06 98 76 54 32 ou 07 11 22 33 44"
    guard = PatientDataGuard({}, _ctx(tmp_path))
    verdict = await guard.check(_q(text))
    assert verdict.action is GuardAction.HOLD
    assert [f.kind for f in verdict.findings] == ["nir", "phone", "name"]
    for finding in verdict.findings:
        said = finding.label + finding.why
        for secret in ("Garnier", "41 03", "98 76", "11 22", "06", "112"):
            assert secret not in said
    nir = verdict.findings[0]
    assert nir.label == "un numéro de sécurité sociale (NIR)"
    assert "ce salon" in nir.why


async def test_english_wording_and_edit_action(tmp_path: Path) -> None:
    """In an English bot with action: edit, the verdict asks for an edit, worded in English."""
    guard = PatientDataGuard({"action": "edit"}, _ctx(tmp_path, "en"))
    verdict = await guard.check(_q("email her son at m.leclerc@orange.fr"))
    assert verdict.action is GuardAction.EDIT
    assert verdict.findings[0].label == "an e-mail address"
    assert "room" in verdict.findings[0].why


async def test_detect_limits_the_kinds(tmp_path: Path) -> None:
    """Kinds left out of ``detect`` are not reported."""
    guard = PatientDataGuard({"detect": ["nir"]}, _ctx(tmp_path))
    verdict = await guard.check(_q("Mme Dupont, tél 06 12 34 56 78"))
    assert verdict.action is GuardAction.PASS
    verdict = await guard.check(_q("Mme Dupont, 2 41 03 75 112 034 86"))
    assert [f.kind for f in verdict.findings] == ["nir"]


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"action": "block"}, "action"),
        ({"action": 1}, "action"),
        ({"detect": "nir"}, "detect"),
        ({"detect": ["nir", "iban"]}, "detect"),
        ({"detect": []}, "detect"),
        ({"detect": [1]}, "detect"),
        ({"actions": "hold"}, "actions"),
    ],
)
def test_bad_options_name_the_option(
    tmp_path: Path, options: dict[str, object], option: str
) -> None:
    """A wrong value, a wrong type or an unknown option raises PluginOptionError naming it."""
    with pytest.raises(PluginOptionError) as info:
        PatientDataGuard(options, _ctx(tmp_path))
    assert info.value.option == option


def test_long_adversarial_text_stays_within_the_time_budget() -> None:
    """A 60 kB message full of near-matches is checked well within the 2 s hook budget."""
    texts = [
        "Mme Dupont 06 12 34 56 78 née le 12/03/1941 " * 1400,
        "Mme Dupont " * 6000,
        "INS " + "1 " * 30000,
        "a@" + "b." * 30000,
    ]
    for text in texts:
        started = time.perf_counter()
        find_patient_data(text)
        assert time.perf_counter() - started < 1.0
