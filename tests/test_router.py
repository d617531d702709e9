"""The router: shipped routes, memory, fallback, configuration errors, the classifier and the CLI.

One real MiniLM embedder for the module (loading costs ~10 s); no mocks of the model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from router import (
    RouteConfigError,
    Router,
    RouteSpec,
    classifier_location,
    evaluate,
    format_report,
    load_routes,
    read_labelled,
    train_classifier,
)
from router.classifier import RouteClassifier
from router.encoder import QueryEncoder
from router.memory import is_follow_up, is_transform_request

KNOWLEDGE_TURNS = [
    {"role": "user", "content": "How much is the pro plan per month?"},
    {"role": "assistant", "content": "The pro plan costs 12 euros a month [1].", "route": "knowledge"},
]
SKILL_TURNS = [
    {"role": "user", "content": "Write a short birthday message for my colleague Sam"},
    {"role": "assistant", "content": "Happy birthday, Sam! Wishing you a great year.", "route": "skill"},
]


@pytest.fixture(scope="module")
def embedder():
    from knowledge.embedding import Embedder

    return Embedder()


@pytest.fixture(scope="module")
def router(embedder) -> Router:
    return Router(load_routes(), embedder)


# --- configuration ------------------------------------------------------------------------------------


def test_default_routes_are_knowledge_skill_and_draft() -> None:
    routes = {r.name: r for r in load_routes()}
    assert set(routes) == {"knowledge", "skill", "draft"}
    assert routes["knowledge"].retrieve is True and routes["knowledge"].action == "knowledge"
    assert routes["skill"].retrieve is False and routes["skill"].action == "skill"
    assert len(routes["knowledge"].examples) >= 20 and len(routes["skill"].examples) >= 20


def test_routes_file_adds_a_route_with_its_adapter(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(
        """
[[routes]]
name = "legal-drafting"
description = "Drafting contract clauses in the firm's style, with the facts from the documents"
action = "skill"
adapter = "legal-v1"
retrieve = true
collection = "contracts"
examples = ["Draft a termination clause for the supplier agreement", "Write an indemnity clause"]
""",
        encoding="utf-8",
    )
    routes = {r.name: r for r in load_routes(path)}
    assert set(routes) == {"knowledge", "skill", "draft", "legal-drafting"}
    legal = routes["legal-drafting"]
    assert (legal.adapter, legal.collection, legal.retrieve, legal.action) == ("legal-v1", "contracts", True, "skill")


def test_yaml_routes_file_can_replace_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "include_defaults: false\nroutes:\n"
        "  - {name: faq, action: knowledge, examples: ['what are the opening hours?']}\n"
        "  - {name: chat, action: skill, examples: ['hello!']}\n",
        encoding="utf-8",
    )
    assert [r.name for r in load_routes(path)] == ["faq", "chat"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[routes]]\nname = "x"\naction = "answer"\nexamples = ["a"]\n', "action must be one of"),
        ('[[routes]]\nname = "x"\naction = "skill"\nexamples = []\n', "route 'x': needs a non-empty list"),
        ('[[routes]]\nname = "x"\naction = "knowledge"\nretrieve = false\nexamples = ["a"]\n', "always retrieves"),
        ('[[routes]]\nname = "x"\naction = "skill"\nexamples = ["a"]\nadaptor = "y"\n', "unknown keys ['adaptor']"),
        ("routes = [\n", "not valid TOML"),
    ],
)
def test_bad_routes_file_names_the_problem(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(RouteConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_routes(path)


def test_unknown_adapter_fails_at_start_up_naming_route_and_adapter(embedder) -> None:
    routes = [*load_routes(), RouteSpec("legal-drafting", "contracts", "skill", ["Draft a clause"], adapter="legal-v1")]
    with pytest.raises(RouteConfigError, match=r"route 'legal-drafting' uses adapter 'legal-v1'.*not registered"):
        Router(routes, embedder, known_adapters=["support-tone"])
    # a registered adapter is accepted
    Router(routes, embedder, known_adapters=["legal-v1"])


def test_unknown_default_route_is_rejected(embedder) -> None:
    with pytest.raises(RouteConfigError, match="default route 'faq'"):
        Router(load_routes(), embedder, default_route="faq")


# --- decisions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "How do I change the e-mail address on my account?",
        "What is the penalty for breaking a lease early?",
        "What are the side effects of amoxicillin?",
        "My package was delivered to the wrong address",
    ],
)
def test_obvious_knowledge_messages(router: Router, message: str) -> None:
    decision = router.decide(message)
    assert decision.route == "knowledge" and decision.retrieve and not decision.fallback
    assert decision.confidence >= 0.8
    # the explanation backs the decision: most of the nearest examples (a route scores by its top 3) are knowledge
    assert sum(n["route"] == "knowledge" for n in decision.nearest) >= 2
    assert "nearest examples" in decision.reason


@pytest.mark.parametrize(
    "message",
    [
        "Write a warm welcome e-mail for new subscribers",
        "Thank you so much, you're great!",
        "Translate 'good luck with the exam' into Spanish",
        "Rewrite this so it sounds more polite: send me the file now",
    ],
)
def test_obvious_skill_messages(router: Router, message: str) -> None:
    decision = router.decide(message)
    assert decision.action == "skill" and decision.confidence >= 0.8 and not decision.fallback
    # an e-mail for others is drafting with facts (the draft route retrieves); the rest is plain skill work
    expected = "draft" if "e-mail" in message else "skill"
    assert decision.route == expected and decision.retrieve == (expected == "draft")


def test_decision_fields_are_consistent(router: Router) -> None:
    decision = router.decide("Where can I download my invoices?")
    assert set(decision.scores) == {"knowledge", "skill", "draft"}
    assert abs(sum(decision.scores.values()) - 1.0) < 1e-3
    assert decision.confidence == max(decision.scores.values())
    assert decision.method == "similarity" and decision.latency_ms > 0
    json.dumps(decision.to_dict())


def test_short_follow_up_inherits_the_previous_route(router: Router) -> None:
    assert router.decide("and for annual plans?", KNOWLEDGE_TURNS).route == "knowledge"
    # the same ambiguous follow-up goes wherever the conversation was
    message = "and for my manager?"
    after_knowledge = router.decide(message, KNOWLEDGE_TURNS)
    after_skill = router.decide(message, SKILL_TURNS)
    assert after_knowledge.route == "knowledge" and after_knowledge.memory == "follow-up"
    assert after_skill.route == "skill" and after_skill.memory == "follow-up"
    assert "follow-up" in after_skill.reason and after_skill.method.endswith("+follow-up")


def test_a_follow_up_that_clearly_belongs_elsewhere_keeps_its_own_route(router: Router) -> None:
    alone = router.decide("and thank you so much, you are wonderful!")
    assert alone.route == "skill" and alone.confidence >= 0.985
    decision = router.decide("and thank you so much, you are wonderful!", KNOWLEDGE_TURNS)
    assert decision.memory == "follow-up" and decision.route == "skill"


def test_rework_request_after_a_knowledge_answer_is_skill(router: Router) -> None:
    for message in ("make it shorter", "translate that to French", "Can you rewrite your answer more formally?"):
        decision = router.decide(message, KNOWLEDGE_TURNS)
        assert decision.route == "skill", message
        assert decision.memory == "transform" and "rework the previous answer" in decision.reason


def test_a_new_question_after_an_answer_is_not_captured_by_memory(router: Router) -> None:
    decision = router.decide("What is the warranty period for laptops?", SKILL_TURNS)
    assert decision.route == "knowledge" and decision.memory is None


def test_low_confidence_falls_back_to_the_default_and_says_so(embedder) -> None:
    same = ["hello", "what is the price?", "write a poem"]
    routes = [RouteSpec("faq", "", "knowledge", list(same)), RouteSpec("chat", "", "skill", list(same))]
    router = Router(routes, embedder, default_route="chat", min_confidence=0.6)
    decision = router.decide("what is the price?")
    assert decision.confidence == pytest.approx(0.5, abs=1e-3)
    assert decision.fallback and decision.route == "chat"
    assert "low confidence" in decision.reason and "default route 'chat'" in decision.reason


def test_default_threshold_falls_back_on_a_message_between_routes(router: Router) -> None:
    """Scan a few deliberately vague messages: any below the threshold must fall back to knowledge and say so."""
    vague = ["hmm", "ok so", "the thing", "well", "maybe", "right"]
    decisions = [router.decide(m) for m in vague]
    low = [d for d in decisions if d.confidence < router.min_confidence]
    for d in low:
        assert d.fallback and d.route == "knowledge" and "falling back" in d.reason
    for d in decisions:
        assert d.fallback == (d.confidence < router.min_confidence)


def test_retrieval_strength_moves_towards_retrieving_routes(router: Router) -> None:
    message = "tell me about the premium features"
    weak = router.decide(message, retrieval_strength=0.05)
    strong = router.decide(message, retrieval_strength=0.8)
    assert strong.scores["knowledge"] > weak.scores["knowledge"]
    assert "retrieval strength" in strong.reason


def test_empty_message_is_refused(router: Router) -> None:
    with pytest.raises(ValueError, match="empty message"):
        router.decide("   ")


def test_memory_cues() -> None:
    assert is_transform_request("make it shorter")
    assert is_transform_request("Shorter, please")
    assert is_transform_request("translate that to French")
    assert not is_transform_request("How do I translate documents in the app?")
    assert not is_transform_request("what is the refund policy?")
    assert is_follow_up("and for annual plans?")
    assert is_follow_up("what about Germany?")
    assert not is_follow_up("How do I reset my password on the mobile app?")


def test_fast_encoder_matches_the_embedder(embedder) -> None:
    import numpy as np

    encoder = QueryEncoder(embedder)
    text = "How long does shipping take?"
    assert float(np.dot(encoder.encode(text), embedder.embed_query(text))) > 0.9999


# --- classifier and evaluation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_training_set(shared_data: Path) -> list[dict]:
    rows = read_labelled(shared_data / "router" / "train.jsonl")
    random.Random(7).shuffle(rows)
    return rows[:240]


def test_train_save_load_and_route_with_the_classifier(embedder, small_training_set, tmp_path: Path) -> None:
    routes = load_routes()
    encoder = QueryEncoder(embedder)
    model = train_classifier(
        [r["text"] for r in small_training_set], [r["route"] for r in small_training_set], routes, encoder
    )
    heldout = model.metrics["heldout"]
    assert set(heldout) == {"similarity", "classifier", "combined", "fixed_mix"}
    assert heldout["classifier"]["accuracy"] > 0.8
    assert model.method in heldout and 0.0 <= model.weight <= 1.0
    path = classifier_location(tmp_path)
    model.save(path)
    loaded = RouteClassifier.load(path)
    assert loaded.labels == ["knowledge", "skill"] and loaded.embedder == embedder.name

    router = Router(routes, embedder, classifier_path=path, method="combined")
    assert router.method == "combined"
    assert router.decide("What are the symptoms of measles?").route == "knowledge"
    assert router.decide("Write a limerick about my cat").route == "skill"
    assert router.decide("hello there").reason.count("example similarity") == 1

    # a user route of the same action shares the 'skill' label's probability
    drafting = RouteSpec("drafting", "", "skill", ["Draft a contract clause about late payment"], adapter="d1")
    with_custom = Router([*routes, drafting], embedder, classifier_path=path)
    assert with_custom.decide("Draft a clause on late payment interest").route == "drafting"

    meta = json.loads(path.read_text())
    meta["embedder"] = "some-other-model"
    path.write_text(json.dumps(meta))
    with pytest.raises(RouteConfigError, match="trained with embedder 'some-other-model'"):
        Router(routes, embedder, classifier_path=path)


def test_evaluate_reports_accuracy_per_route_and_latency(router: Router) -> None:
    rows = [
        {"text": "What is the cancellation fee?", "route": "knowledge"},
        {"text": "How do I update my billing address?", "route": "knowledge"},
        {"text": "Write a thank-you card for my nurse", "route": "skill"},
        {"text": "good morning!", "route": "skill"},
        {"text": "make it shorter", "route": "skill", "history": KNOWLEDGE_TURNS},
    ]
    result = evaluate(router.decide, rows)
    assert result["n"] == 5 and result["labels"] == ["knowledge", "skill"]
    assert sum(map(sum, result["confusion"])) == 5
    correct = result["confusion"][0][0] + result["confusion"][1][1]
    assert result["accuracy"] == pytest.approx(correct / 5)
    assert result["latency_ms"]["p95"] >= result["latency_ms"]["p50"] > 0
    assert "precision" in format_report(result)


def test_read_labelled_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "hi", "route": "skill"}\n{"text": "no route"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: each line needs a string 'route'"):
        read_labelled(path)


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_route_and_eval(embedder, tmp_path: Path, monkeypatch) -> None:
    from bot.cli import cli, router_commands

    monkeypatch.setenv("RAGTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(router_commands, "_embedder", lambda config: embedder)  # reuse the loaded model
    runner = CliRunner()
    result = runner.invoke(cli, ["route", "What is the refund window?", "--json"])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.output)
    assert decision["route"] == "knowledge" and decision["reason"]

    data = tmp_path / "labelled.jsonl"
    data.write_text(
        '{"text": "What does the warranty cover?", "route": "knowledge"}\n'
        '{"text": "Write a tweet about our new app", "route": "skill"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "eval.json"
    result = runner.invoke(cli, ["router", "eval", str(data), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "p95" in result.output
    assert json.loads(out.read_text())["n"] == 2

    result = runner.invoke(cli, ["router", "eval", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "does not exist" in result.output
