"""Drafting with facts and a classifier that corrects similarity instead of replacing it (issue #18).

The real MiniLM embedder, as in tests/test_router.py; no mocks of the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router import Router, RouteSpec, load_routes, train_classifier
from router.classifier import GATE_HIGH, GATE_LOW, RouteClassifier
from router.encoder import QueryEncoder

AFTER_KNOWLEDGE = [
    {"role": "user", "content": "What is the refund policy?"},
    {
        "role": "assistant",
        "content": "Items can be returned within 30 days for a full refund [1].",
        "route": "knowledge",
    },
]
AFTER_DRAFT = [
    {"role": "user", "content": "Write an e-mail to a customer about the new delivery times"},
    {"role": "assistant", "content": "Dear customer, from Monday we deliver within two days [1].", "route": "draft"},
]


@pytest.fixture(scope="module")
def embedder():
    from knowledge.embedding import Embedder

    return Embedder()


@pytest.fixture(scope="module")
def router(embedder) -> Router:
    return Router(load_routes(), embedder)


def test_default_routes_include_a_retrieving_draft_route() -> None:
    routes = {r.name: r for r in load_routes()}
    draft = routes["draft"]
    assert draft.action == "skill" and draft.retrieve is True and len(draft.examples) >= 10
    assert routes["skill"].retrieve is False
    assert not set(draft.examples) & set(routes["skill"].examples)


def test_a_customer_reply_goes_to_the_draft_route_with_retrieval(router: Router) -> None:
    decision = router.decide("Write a friendly reply to a customer who wants a refund")
    assert (decision.route, decision.action, decision.retrieve) == ("draft", "skill", True)
    assert not decision.fallback and decision.confidence >= 0.8


@pytest.mark.parametrize(
    "message",
    [
        "Draft an e-mail to our clients explaining the new cancellation terms",
        "Summarise the sick leave policy for staff",
    ],
)
def test_drafting_with_facts_in_other_domains(router: Router, message: str) -> None:
    decision = router.decide(message)
    assert decision.route == "draft" and decision.retrieve


@pytest.mark.parametrize("history", [AFTER_KNOWLEDGE, AFTER_DRAFT], ids=["after-knowledge", "after-draft"])
def test_reworking_the_last_answer_goes_to_the_plain_skill_route(router: Router, history: list[dict]) -> None:
    decision = router.decide("make that shorter", history)
    assert (decision.route, decision.retrieve, decision.memory) == ("skill", False, "transform")


def test_plain_rewriting_and_small_talk_do_not_retrieve(router: Router) -> None:
    for message in ("Rewrite this so it sounds more polite: send me the file now", "Good morning, how are you?"):
        decision = router.decide(message)
        assert decision.route == "skill" and not decision.retrieve, message


def test_a_fact_question_still_goes_to_knowledge(router: Router) -> None:
    decision = router.decide("How many days do I have to return a product for a refund?")
    assert decision.route == "knowledge" and decision.retrieve


def test_a_skill_request_split_between_two_skill_routes_does_not_fall_back(router: Router) -> None:
    """Confidence is per action: skill 0.45 + draft 0.45 is a confident skill decision, not a knowledge fallback."""
    p = np.array([0.1, 0.45, 0.45])
    best, confidence = router._best(p)
    assert router.routes[best].action == "skill" and confidence == pytest.approx(0.9)


def test_rework_keeps_a_custom_retrieving_route_that_has_its_own_adapter(embedder) -> None:
    legal = RouteSpec("legal-drafting", "", "skill", ["Draft a termination clause"], adapter="legal-v1", retrieve=True)
    router = Router([*load_routes(), legal], embedder)
    history = [
        {"role": "user", "content": "Draft a termination clause"},
        {"role": "assistant", "content": "Either party may terminate...", "route": "legal-drafting"},
    ]
    assert router.decide("make it shorter", history).route == "legal-drafting"


# --- the classifier as a correction ---------------------------------------------------------------------


def test_gate_weight_follows_closeness_to_the_labelled_messages() -> None:
    anchors = np.eye(3, dtype=np.float32)
    model = RouteClassifier(["knowledge", "skill"], np.zeros((1, 3)), np.zeros(1), 1.0, "x", anchors=anchors)
    far = np.array([[0.0, 0.0, 0.0]])
    mid = np.array([[(GATE_LOW + GATE_HIGH) / 2, 0.0, 0.0]])
    assert model.gate_weight(far)[0] == 0.0
    assert model.gate_weight(mid)[0] == pytest.approx(0.5)
    assert model.gate_weight(np.array([[1.0, 0.0, 0.0]]))[0] == 1.0


def test_a_classifier_trained_on_one_domain_does_not_override_another(embedder, tmp_path: Path) -> None:
    """Labels that only know banking questions and small talk: the classifier alone sends a drafting request in
    an unseen domain wherever its line falls, the combined router leaves it to the examples, and the anchors
    survive saving."""
    knowledge = ["Why was my card declined?", "How do I top up my account?", "Where is my new card?"] * 4
    skill = ["hello there", "thanks a lot", "who made you?", "are you a robot?"] * 3
    routes = load_routes()
    encoder = QueryEncoder(embedder)
    model = train_classifier(knowledge + skill, ["knowledge"] * 12 + ["skill"] * 12, routes, encoder)
    assert model.method == "combined" and model.anchors is not None and len(model.anchors) == 24
    path = model.save(tmp_path / "classifier.json")
    assert RouteClassifier.load(path).anchors.shape == model.anchors.shape

    combined = Router(routes, embedder, classifier_path=path)
    untrained = Router(routes, embedder)
    message = "Write a short letter to a patient about their test results"
    assert combined.decide(message).route == untrained.decide(message).route == "draft"
    # close to the labelled messages, the classifier decides
    assert "share was 1.00" in combined.decide("Why was my card declined?").reason
