"""Urgent wording: what reads as an emergency now, the notice, and the options."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from peerbot.plugin_api import GuardAction, PluginContext, PluginOptionError, Question
from plugins.urgent_wording import UrgentWording, assess_urgency

# (text, expected category or None). Written before the patterns were tuned; kept as the
# labelled set the figures in the report come from (see test_labelled_set_figures).
LABELLED: list[tuple[str, str | None]] = [
    # emergencies now, French
    ("Ma patiente a une douleur thoracique depuis 20 minutes, que faire ?", "chest_pain"),
    ("Douleur dans la poitrine en ce moment chez un monsieur de 60 ans, sueurs", "chest_pain"),
    ("Le patient ne respire plus !! on fait quoi", "breathing"),
    ("Mme 85 ans ne répond plus depuis 5 min, pouls faible", "unconscious"),
    ("Patient inconscient au domicile, j'ai appelé ?", "unconscious"),
    ("Mon patient veut se suicider, il a des médicaments chez lui", "suicide"),
    ("Jeune femme avec idées suicidaires, elle est seule ce soir", "suicide"),
    ("Il saigne beaucoup du cuir chevelu sous AVK, ça ne s'arrête pas", "bleeding"),
    ("Bouche déviée et bras droit qui tombe depuis 10 minutes", "stroke"),
    ("AVC en cours ? elle ne parle plus d'un coup", "stroke"),
    ("Choc anaphylactique après la piqûre, gorge qui gonfle", "anaphylaxis"),
    ("Il est en train de convulser depuis 6 min, pas de Buccolam", "seizure"),
    ("Patient en arrêt cardiaque, je commence le massage ?", "cardiac_arrest"),
    ("doulleur toracique actuellement, ECG pas dispo", "chest_pain"),
    ("elle ne respire presque plus, lèvres bleues", "breathing"),
    ("il dit qu'il veut en finir, je fais quoi ?", "suicide"),
    ("Hémorragie massive post-partum à domicile !", "bleeding"),
    ("Là il a mal à la poitrine et il est tout gris", "chest_pain"),
    # emergencies now, English
    ("My patient is not breathing, what do I do", "breathing"),
    ("Chest pain right now, 58 yo man, sweating", "chest_pain"),
    ("Resident is unresponsive and cold, nurse alone on shift", "unconscious"),
    ("He says he wants to kill himself tonight", "suicide"),
    ("Client has suicidal thoughts and a plan", "suicide"),
    ("Massive bleeding from the wound, pressure not working", "bleeding"),
    ("Her face is drooping and slurred speech since 15 minutes", "stroke"),
    ("Throat is swelling after amoxicillin, anaphylactic shock?", "anaphylaxis"),
    ("He is having a seizure for 5 minutes now", "seizure"),
    ("Crushing chest pain for the last 30 minutes", "chest_pain"),
    ("she is choking on food right now", "breathing"),
    # educational, past or calm: no notice
    ("Quelle conduite à tenir devant une douleur thoracique en consultation ?", None),
    ("Antécédent d'AVC en 2019, sous Kardegic, on arrête avant la coloscopie ?", None),
    ("Douleur thoracique il y a 3 semaines, ECG normal, quel bilan ?", None),
    ("Comment reconnaître un AVC chez la personne âgée ? formation des aides-soignants", None),
    ("Prise en charge de la détresse respiratoire du nouveau-né : quelles recommandations ?", None),
    ("ATCD de tentative de suicide en 2020, suivi CMP, renouvellement du traitement ?", None),
    ("Quels sont les signes d'un choc anaphylactique ?", None),
    ("Patient aux antécédents d'infarctus, on reprend le sport ?", None),
    (
        "Combien de temps garder l'adrénaline auto-injectable après un oedème de Quincke ancien ?",
        None,
    ),
    ("Épilepsie stable sous Keppra, crise d'épilepsie il y a 2 ans, permis de conduire ?", None),
    ("Hémorragie de la délivrance : quels facteurs de risque ?", None),
    ("What are the causes of chest pain in young adults?", None),
    ("History of stroke in 2018, can he fly?", None),
    ("How to manage respiratory distress in bronchiolitis at home?", None),
    ("Guidelines for seizure management in schools?", None),
    ("Heavy bleeding during periods for years, iron tablets?", None),
    ("Infarctus en 2015, stenté, on arrête le Kardegic avant l'extraction dentaire ?", None),
    ("Patient dialysé, hyperkaliémie à 6, quel délai pour la séance ?", None),
    ("Syncope il y a 2 mois, Holter normal, on fait quoi ensuite ?", None),
    ("K+ 5,2 mmol/L sous IEC, on arrête ?", None),
    ("Les urgences du CHU sont saturées, où adresser une plaie simple ?", None),
    ("Is 3114 the suicide prevention number in France?", None),
    ("Mme 82 ans, escarre talon, quel pansement ?", None),
]

# Written after the first tuning round on LABELLED and never tuned on: an honest check.
HELDOUT: list[tuple[str, str | None]] = [
    (
        "Patiente retrouvée inconsciente dans sa salle de bain, que faire en attendant ?",
        "unconscious",
    ),
    ("il a une oppression thoracique là maintenant, sueurs, nausées", "chest_pain"),
    ("Mon voisin ne respire plus, j'appelle qui ?", "breathing"),
    ("Elle m'a dit qu'elle voulait se tuer ce soir", "suicide"),
    ("Saignement abondant après extraction dentaire sous AOD, ça ne s'arrête pas", "bleeding"),
    ("the resident stopped breathing, CPR?", "breathing"),
    ("Patient says he is going to end his life", "suicide"),
    ("Suddenly can't speak and right arm weak since 20 minutes", "stroke"),
    ("Crise convulsive en cours depuis 8 minutes chez un enfant", "seizure"),
    ("chest tightness right now after the injection", "chest_pain"),
    ("Douleur thoracique chez le sujet jeune : quels diagnostics évoquer ?", None),
    ("Antécédent d'arrêt cardiaque, il veut reprendre le vélo", None),
    ("Suicide : quels sont les facteurs de risque chez la personne âgée ?", None),
    ("AVC ischémique il y a 6 mois, reprise du travail ?", None),
    ("Saignement de nez occasionnel chez un enfant, que conseiller ?", None),
    ("What is the management of status epilepticus in adults?", None),
    ("Had a seizure 3 years ago, can she drive?", None),
    ("Quel matelas pour un patient inconscient en réanimation de longue durée ?", None),
    ("He had chest pain last year, stress test normal, statin?", None),
    ("Formation gestes d'urgence : comment se déroule la formation AFGSU ?", None),
]


def _ctx(tmp_path: Path, language: str = "fr") -> PluginContext:
    return PluginContext(language=language, data_dir=tmp_path, logger=logging.getLogger("t"))


def _q(text: str) -> Question:
    return Question(text=text, room_id="!r:example.org", sender="@a:example.org", event_id="$e")


def _category(text: str) -> str | None:
    found = assess_urgency(text)
    return None if found is None else found.category


def _figures(rows: list[tuple[str, str | None]]) -> tuple[float, float, list[str]]:
    tp = sum(1 for t, c in rows if c is not None and _category(t) is not None)
    fp = sum(1 for t, c in rows if c is None and _category(t) is not None)
    fn = sum(1 for t, c in rows if c is not None and _category(t) is None)
    wrong_category = [t for t, c in rows if c is not None and _category(t) not in (None, c)]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    print(f"urgent: precision {precision:.3f} recall {recall:.3f} tp={tp} fp={fp} fn={fn}")
    return precision, recall, wrong_category


def test_labelled_set_figures() -> None:
    """Precision and recall of "fires" on the tuning set stay high (printed with -s)."""
    precision, recall, wrong_category = _figures(LABELLED)
    assert precision >= 0.95
    assert recall >= 0.9
    assert not wrong_category


def test_heldout_set_figures() -> None:
    """The held-out set was never tuned on: a lower floor, but a floor."""
    precision, recall, wrong_category = _figures(HELDOUT)
    assert precision >= 0.85
    assert recall >= 0.85
    assert not wrong_category


@pytest.mark.parametrize(("text", "expected"), LABELLED)
def test_labelled_examples(text: str, expected: str | None) -> None:
    """Each labelled example: fires with its category, or stays silent."""
    assert _category(text) == expected


async def test_suicide_notice_gives_3114_in_french(tmp_path: Path) -> None:
    """A suicide question gets 15, 112 and 3114, and the peer-advice reminder, in French."""
    plugin = UrgentWording({}, _ctx(tmp_path, "fr"))
    verdict = await plugin.check(_q("Il veut se suicider maintenant"))
    assert verdict.action is GuardAction.PASS
    assert verdict.notice is not None
    for needle in ("15", "112", "3114", "décision médicale"):
        assert needle in verdict.notice


async def test_other_emergency_notice_in_english_has_no_3114(tmp_path: Path) -> None:
    """Other emergencies get 15 and 112 only, worded in English."""
    plugin = UrgentWording({}, _ctx(tmp_path, "en"))
    verdict = await plugin.check(_q("My patient is not breathing"))
    assert verdict.notice is not None
    assert "112" in verdict.notice and "15" in verdict.notice
    assert "3114" not in verdict.notice
    assert "medical decision" in verdict.notice


async def test_calm_question_passes_without_notice(tmp_path: Path) -> None:
    """A routine question passes with no notice."""
    plugin = UrgentWording({}, _ctx(tmp_path))
    verdict = await plugin.check(_q("Quel pansement pour une escarre du talon ?"))
    assert verdict.action is GuardAction.PASS
    assert verdict.notice is None


async def test_extra_patterns_fire_accent_and_case_insensitively(tmp_path: Path) -> None:
    """An admin's extra phrase fires, whatever the accents and case."""
    plugin = UrgentWording({"extra_patterns": ["Hypo sévère"]}, _ctx(tmp_path))
    verdict = await plugin.check(_q("HYPO SEVERE chez un enfant diabétique"))
    assert verdict.notice is not None
    quiet = await plugin.check(_q("hypoglycémie légère corrigée"))
    assert quiet.notice is None


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"extra_patterns": "malaise"}, "extra_patterns"),
        ({"extra_patterns": [1, 2]}, "extra_patterns"),
        ({"extra_patterns": ["  ", "ok"]}, "extra_patterns"),
        ({"patterns": ["malaise"]}, "patterns"),
    ],
)
def test_bad_options_name_the_option(
    tmp_path: Path, options: dict[str, object], option: str
) -> None:
    """A wrong type or an unknown option raises PluginOptionError naming it."""
    with pytest.raises(PluginOptionError) as info:
        UrgentWording(options, _ctx(tmp_path))
    assert info.value.option == option


def test_long_text_stays_within_the_time_budget() -> None:
    """A 60 kB message is assessed well within the 2 s hook budget."""
    for text in ("douleur thoracique il y a 3 ans " * 2000, "toracique " * 6000):
        started = time.perf_counter()
        assess_urgency(text)
        assert time.perf_counter() - started < 1.0
