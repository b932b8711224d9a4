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


# ------------------------------------------------------------------- issue 11: promised kinds


def _nir(body: str, groups: tuple[int, ...], sep: str = " ", key: int | None = None) -> str:
    """A NIR written with the given grouping of its 13 characters, and its key."""
    parts, i = [], 0
    for size in groups:
        parts.append(body[i : i + size])
        i += size
    return sep.join([*parts, f"{nir_key(body) if key is None else key:02d}"])


OVERSEAS = (1, 2, 2, 3, 2, 3)


@pytest.mark.parametrize(
    "nir",
    [
        _nir("2470997112311", OVERSEAS),
        _nir("1621197411052", OVERSEAS, sep="."),
        _nir("2880297601124", OVERSEAS, sep=""),
        _nir("1450198812007", OVERSEAS, sep="-"),
        _nir("2470997112311", (1, 2, 2, 2, 3, 3)),
    ],
)
def test_overseas_nir_in_either_grouping(nir: str) -> None:
    """A NIR of an overseas department (971 12 ...) is found with its exact span."""
    text = f"Patiente {nir}, droits fermés à la CGSS"
    assert _spans(text, "nir") == [nir]


def test_overseas_nir_with_a_wrong_key_needs_a_cue() -> None:
    """An overseas-shaped number with a wrong key is a NIR only after a cue."""
    body = "2470997112311"
    wrong = _nir(body, OVERSEAS, key=(nir_key(body) + 5) % 97)
    assert "nir" not in _kinds(f"Référence {wrong} du colis")
    assert "nir" in _kinds(f"n° sécu {wrong}")
    assert "nir" in _kinds(f"sécu {' '.join(wrong.split()[:-1])} sans la clé")


def test_lower_case_ins_and_corsican_ins_in_one_block() -> None:
    """ "ins-nir" in lower case, and an INS with 2B written without spaces, are INS."""
    body = "193072B045012"
    assert _kinds(f"ins-nir {body}{nir_key(body):02d} affiché en rouge") == {"ins"}


@pytest.mark.parametrize("phone", ["06 123 456 78", "07 1234 5678", "+336 12 34 56 78"])
def test_french_phone_numbers_in_other_groupings(phone: str) -> None:
    """Groups of two to four digits, and +33 forms the pattern misses, are phones."""
    assert _spans(f"appeler la fille au {phone} ce soir", "phone") == [phone]


@pytest.mark.parametrize(
    "text",
    [
        "Drogues Info Service 08 00 23 13 13",
        "0 800 858 858 numéro vert des aidants",
        "comptes 0 5 1 2 3 4 5 6 7 8 au total",
        "code 1 85 05 78 006 084 00 du colis",
        "appeler le 15, le 112, le 3114 ou le 115",
        "SOS Médecins 3624 ou le 116 117",
        "RPPS 10101234567, FINESS 750712184, SIRET 12345678900012",
    ],
)
def test_public_and_service_numbers_are_not_phones(text: str) -> None:
    """Emergency and service numbers, professional and establishment IDs are nothing to hold."""
    assert _kinds(text) == set()


@pytest.mark.parametrize(
    "text",
    [
        "DN 24/12/37, chute sous AVK",
        "dn: 03/05/52, HTA",
        "D.N. 02/11/1950, ulcère",
        "DN 12 mars 1938",
        "née 15.08.1944, démence",
        "date de naiss. : 17/06/1949",
        "date naissance 05/05/1955",
        "DOB 5-Jan-1949",
        "date de naissance 14 07 1950",
    ],
)
def test_short_birth_date_forms(text: str) -> None:
    """DN, née without "le", abbreviated cues and other date shapes are dates of birth."""
    assert _kinds(text) == {"birthdate"}


@pytest.mark.parametrize(
    "text",
    [
        "score DN4 à 6/10, prégabaline ?",
        "DN 4/10 au questionnaire",
        "DN4 : 4/10, plutôt nociceptive",
        "admise le 24/12 pour chute, sortie le 02/01",
        "vaccin fait le 12/10/24, rappel quand ?",
        "né à 41 SA + 3 jours, ictère",
        "started on 12/03/2024, DOB unknown",
    ],
)
def test_pain_scores_and_other_dates_are_not_birth_dates(text: str) -> None:
    """The DN4 score and exam or admission dates are not dates of birth."""
    assert "birthdate" not in _kinds(text)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("mme. durand refuse ses soins", "mme. durand"),
        ("monsieur garnier est tombé cette nuit", "monsieur garnier"),
        ("Mme. Lefèvre, 91 ans", "Mme. Lefèvre"),
        ("Mme.Giraud refuse le lever", "Mme.Giraud"),
        ("M.Lemoine fait des fausses routes", "M.Lemoine"),
        ("pte Moreau, 67 ans", "pte Moreau"),
        ("pte durand, 84 ans, confuse", "pte durand"),
        ("ma patiente Durand refuse l'insuline", "patiente Durand"),
        ("ma patiente durand refuse l'insuline", "patiente durand"),
        ("Mr Bernard a des hallucinations", "Mr Bernard"),
        ("mrs johnson refuses her meds", "mrs johnson"),
        ("Pt Harris c/o chest pain", "Pt Harris"),
        ("mme. traoré, 45 ans", "mme. traoré"),
        ("Mme. d'Almeida, 66 ans", "Mme. d'Almeida"),
        ("Mr. Van der Berg, 81", "Mr. Van der Berg"),
        ("ma pte mme rivière a 40 de fièvre", "mme rivière"),
        ("mme laurent a chuté", "mme laurent"),
        ("madame blanc refuse", "madame blanc"),
        ("M Dupuis refuse la toilette", "M Dupuis"),
    ],
)
def test_names_in_care_workers_forms(text: str, name: str) -> None:
    """Lower case, a period, no space, abbreviations and particles: the name is found."""
    assert _spans(text, "name") == [name]


@pytest.mark.parametrize(
    "text",
    [
        "madame refuse la toilette",
        "monsieur est tombé deux fois",
        "mme a chuté de sa hauteur",
        "mme âgée de 82 ans",
        "monsieur opéré hier, redon à retirer ?",
        "madame garde la chambre depuis 2 jours",
        "monsieur porte une sonde depuis 3 mois",
        "madame souhaiterait rentrer chez elle",
        "bonjour madame, vous êtes madame ?",
        "la patiente présente des œdèmes",
        "la patiente dont je parlais hier",
        "le patient lui-même demande l'arrêt",
        "ma patiente diabétique refuse",
        "pt refuses meds, what now?",
        "ms flare after stopping natalizumab",
        "did I miss a dose of my insulin?",
        "Miss doses of insulin at night?",
        "Pt states pain 8/10",
        "pic M Monoclonal à l'électrophorèse, protéine M Kappa",
        "MR angiography or CT angiography?",
        "MS Contin 30 mg twice a day",
        "M. pneumoniae ou M. tuberculosis chez l'enfant ?",
        "Monsieur le Maire a fermé le cabinet",
        "Madame, Monsieur, bonjour à tous",
        "madame bonjour, monsieur merci",
        "pte fébrile, somnolente, hypotendue",
        "pte tachycarde, consciente et orientée",
        "monsieur somnolent depuis la morphine",
        "an ``m.room.message`` event from m.room.member",
    ],
)
def test_titles_followed_by_the_sentence_are_not_names(text: str) -> None:
    """Verbs, adjectives, pronouns after a title, and MR/MS/M. that are not titles: no name."""
    assert "name" not in _kinds(text)


@pytest.mark.parametrize(
    "text",
    [
        "maladie de Crohn sous infliximab, quels vaccins ?",
        "syndrome de Guillain-Barré après une gastro",
        "patiente Alzheimer stade sévère",
        "le patient Crohn est sous ustekinumab",
        "patiente Basedow sous néomercazole",
        "hépatite auto-immune ou maladie de Wilson ?",
        "signe de Babinski, test de Romberg positif",
        "le protocole du Dr Martin pour les AVK",
        "Dr. Martin said to hold the metformin",
        "demander au docteur Garnier, ou au Pr Durand",
    ],
)
def test_eponymous_diseases_and_colleagues_are_not_patients(text: str) -> None:
    """Diseases named after people, and doctors cited by name, are not patient data."""
    assert _kinds(text) == set()


# --------------------------------------------------------------------- issue 11: new kinds


@pytest.mark.parametrize(
    "phone",
    [
        "+32 471 23 45 67",
        "+41 79 312 45 67",
        "+44 7911 123456",
        "+1 617 432 1187",
        "00212 661 234 578",
        "00 213 21 23 45 67",
        "+49 151 23456789",
        "+225 07 07 12 34 56",
        "(617) 432-1187",
    ],
)
def test_foreign_phone_numbers(phone: str) -> None:
    """Numbers valid in another country's plan are found as foreign phones, span included."""
    text = f"la famille au {phone} attend des nouvelles"
    assert [d.kind for d in find_patient_data(text)] == ["foreign_phone"]
    assert _spans(text, "foreign_phone") == [phone]


def test_foreign_number_after_other_digits() -> None:
    """A NIR right before a foreign number does not hide it."""
    body = "1400397209088"
    text = f"monsieur rey {_nir(body, OVERSEAS)} 00212 661 234 579"
    assert _kinds(text) == {"name", "nir", "foreign_phone"}


@pytest.mark.parametrize(
    "text",
    [
        "+44 1234 5",
        "+1 123 456 7890",
        "+999 123 456 789",
        "+2 pitting edema, weight up 3 kg",
        "K+ 3,2 mmol/L, +40 mEq en 24 h",
        "créat +20 % en 48 h",
        "ISBN 978-2-294-75678-1 du guide",
        "DOI 10.1001/jama.2024.12345, PMID 31234567",
        "BP 160/95, HR 110, RR 24, SpO2 91%",
    ],
)
def test_invalid_numbers_and_figures_are_not_foreign_phones(text: str) -> None:
    """Numbers no plan allows (bad lengths or prefixes) and clinical figures are not phones."""
    assert not _kinds(text) & {"foreign_phone", "phone"}


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("elle habite 14 rue des Lilas, 69003 Lyon", "14 rue des Lilas"),
        ("au 3 bis avenue Jean Jaurès", "3 bis avenue Jean"),
        ("domicile : 27, bd Gambetta", "27, bd Gambetta"),
        ("soins au 12 rue victor hugo le soir", "12 rue victor"),
        ("18 av. Foch, digicode", "18 av. Foch"),
        ("1 place de la Mairie", "1 place de la Mairie"),
        ("code postal 97410 Saint-Pierre", "97410 Saint-Pierre"),
        ("patient qui vit à 76600 Le Havre", "76600 Le Havre"),
        ("habite 5 square Lamartine", "5 square Lamartine"),
        ("27 rue du 8 Mai 1945", "27 rue du 8"),
    ],
)
def test_postal_addresses(text: str, address: str) -> None:
    """A number and a street, or a postcode and a town, are an address."""
    assert _spans(text, "address")[0] == address


@pytest.mark.parametrize(
    "text",
    [
        "2 voies veineuses périphériques en place",
        "1 place disponible en SSR",
        "2 places restantes en HDJ",
        "1 avenue thérapeutique reste",
        "en cours de bilan, 3 jours",
        "en 2 cours de 3 heures",
        "patient SDF vivant dans la rue",
        "15000 Plaquettes après chimio",
        "10000 UI Héparine, 5000 Unités de Lovenox",
        "CHU de Bordeaux, Hôpital Georges Pompidou",
    ],
)
def test_counts_and_care_words_are_not_addresses(text: str) -> None:
    """ "Voie", "place", "cours" in their care meaning and counts of things are not addresses."""
    assert "address" not in _kinds(text)


@pytest.mark.parametrize(
    ("text", "record"),
    [
        ("IPP 2301458796, dossier absent", "IPP 2301458796"),
        ("ipp : 0045871236 mal saisi", "ipp : 0045871236"),
        ("n° de dossier 24-008512", "n° de dossier 24-008512"),
        ("numéro de dossier : A2023-11457", "numéro de dossier : A2023-11457"),
        ("NDA 562301889 clôturé", "NDA 562301889"),
        ("n° séjour 231045887", "n° séjour 231045887"),
        ("MRN 4587123, labs missing", "MRN 4587123"),
        ("medical record number 88-451-220", "medical record number 88-451-220"),
        ("IPP du patient : 4501236", "IPP du patient : 4501236"),
        ("identifiant patient 20231145", "identifiant patient 20231145"),
    ],
)
def test_hospital_record_numbers(text: str, record: str) -> None:
    """A record cue followed by an identifier of five digits or more is a record number."""
    assert _spans(text, "record") == [record]


@pytest.mark.parametrize(
    "text",
    [
        "IPP 20 mg le soir ou le matin ?",
        "IPP 40mg IV x2/j pendant 72 h",
        "sous IPP depuis 2019, densitométrie ?",
        "IPP 14 jours après la ligature",
        "n° de lot 4587123 du vaccin",
        "numéro de dossier à demander à l'accueil",
        "le dossier 3 du cours sur les plaies",
        "chambre 214, lit 2",
    ],
)
def test_the_ipp_drug_and_other_numbers_are_not_records(text: str) -> None:
    """The drug class IPP with its dose, lot numbers and short references are not records."""
    assert "record" not in _kinds(text)


@pytest.mark.parametrize(
    "text",
    [
        "Hb 8,2 g/dL, plaquettes 45000/mm3, GB 12 500",
        "ECG : RS 72/min, PR 160 ms, QRS 90 ms, QTc 460 ms",
        "héparine 25000 UI/24h, morphine 10 mg toutes les 4 h",
        "vitamine D 100000 UI tous les 3 mois",
        "NT-proBNP 12500 pg/mL, troponine 45 ng/L puis 112 ng/L",
        "INR 2-3, PT 14.5 s, aPTT 32 s",
    ],
)
def test_lab_values_doses_and_ecg_figures_are_nothing(text: str) -> None:
    """Clinical figures trigger no kind at all."""
    assert _kinds(text) == set()


def test_detect_option_selects_each_new_kind() -> None:
    """Each new kind can be asked for alone, and only it is reported."""
    text = "Mme Garcia, 12 rue des Roses, +32 471 23 45 67, IPP 5512478"
    for kind in ("address", "foreign_phone", "record"):
        assert [d.kind for d in find_patient_data(text, [kind])] == [kind]
    assert {d.kind for d in find_patient_data(text)} == {
        "name",
        "address",
        "foreign_phone",
        "record",
    }


# ------------------------------------------------------------------------------ labelled set

BENCH = TESTSET.parent
PROMISED = ("nir", "ins", "phone", "email", "birthdate", "name")


def _load_file(name: str) -> list[tuple[str, set[str]]]:
    path = BENCH / name
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return [(r["text"], set(r["kinds"])) for r in rows]


def _load(split: str) -> list[tuple[str, set[str]]]:
    rows = [json.loads(line) for line in TESTSET.read_text("utf-8").splitlines() if line]
    return [(r["text"], set(r["kinds"])) for r in rows if r["split"] == split]


def _micro(rows: list[tuple[str, set[str]]], kinds: tuple[str, ...]) -> tuple[float, float]:
    tp = fp = fn = 0
    for text, gold in rows:
        pred = _kinds(text)
        tp += len(gold & pred & set(kinds))
        fp += len((pred - gold) & set(kinds))
        fn += len((gold - pred) & set(kinds))
    return tp / (tp + fp), tp / (tp + fn)


@pytest.mark.parametrize(("split", "floor"), [("dev", 0.97), ("heldout", 0.9)])
def test_first_labelled_set_precision_and_recall(split: str, floor: float) -> None:
    """Micro precision and recall over kinds stay above a floor on each split of the first set."""
    precision, recall = _micro(_load(split), KINDS)
    assert precision >= floor
    assert recall >= floor


@pytest.mark.parametrize(
    ("name", "kinds", "floor"),
    [
        ("guard_tune.jsonl", PROMISED, 0.98),
        ("guard_tune.jsonl", tuple(k for k in KINDS if k not in PROMISED), 0.95),
        ("guard_heldout.jsonl", PROMISED, 0.97),
        ("guard_heldout.jsonl", tuple(k for k in KINDS if k not in PROMISED), 0.90),
    ],
)
def test_issue_11_sets_precision_and_recall(
    name: str, kinds: tuple[str, ...], floor: float
) -> None:
    """The tuning and held-out sets keep their measured recall and precision (regression floor)."""
    precision, recall = _micro(_load_file(name), kinds)
    assert recall >= floor
    assert precision >= 0.95


def test_labelled_sets_are_large_and_mixed() -> None:
    """The sets keep enough positives of each kind and many negatives."""
    rows = _load("dev") + _load("heldout")
    assert len(rows) >= 150
    assert sum(1 for _, k in rows if not k) >= 80
    for name in ("guard_tune.jsonl", "guard_heldout.jsonl"):
        rows = _load_file(name)
        assert len(rows) >= 180, name
        assert sum(1 for _, k in rows if not k) >= 80, name
        for kind in KINDS:
            assert sum(1 for _, k in rows if kind in k) >= 4, (name, kind)


def test_tuning_and_held_out_sets_share_no_text() -> None:
    """No text of the held-out set is also in the tuning set."""
    tune = {t for t, _ in _load_file("guard_tune.jsonl")}
    assert not tune & {t for t, _ in _load_file("guard_heldout.jsonl")}


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


@pytest.mark.parametrize("language", ["fr", "en"])
async def test_new_kinds_are_worded_in_both_languages_without_quoting(
    tmp_path: Path, language: str
) -> None:
    """Foreign phone, address and record findings have their own label and reason, no data."""
    text = "Mme Garcia, 12 rue des Roses, 69003 Lyon, +32 471 23 45 67, IPP 5512478"
    verdict = await PatientDataGuard({}, _ctx(tmp_path, language)).check(_q(text))
    assert [f.kind for f in verdict.findings] == ["foreign_phone", "name", "address", "record"]
    labels = {f.label for f in verdict.findings}
    assert len(labels) == 4
    for finding in verdict.findings:
        said = finding.label + finding.why
        for secret in ("Garcia", "Roses", "69003", "Lyon", "471", "5512478"):
            assert secret not in said
    english = {f.kind: f.label for f in verdict.findings}
    if language == "en":
        assert english["address"] == "a postal address"
    else:
        assert english["address"] == "une adresse postale"


async def test_detect_accepts_the_new_kinds(tmp_path: Path) -> None:
    """``detect: [record]`` reports a record number and nothing else."""
    guard = PatientDataGuard({"detect": ["record"]}, _ctx(tmp_path))
    verdict = await guard.check(_q("Mme Garcia, IPP 5512478"))
    assert [f.kind for f in verdict.findings] == ["record"]
