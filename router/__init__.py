"""Routing each message to knowledge (retrieve, then answer) or a skill (a LoRA adapter or the base model)."""

from router.classifier import RouteClassifier, read_labelled, train_classifier
from router.core import DEFAULT_MIN_CONFIDENCE, Decision, Router, build_router, classifier_location
from router.evaluate import evaluate, format_report
from router.routes import RouteConfigError, RouteSpec, default_routes, load_routes

__all__ = [
    "DEFAULT_MIN_CONFIDENCE",
    "Decision",
    "RouteClassifier",
    "RouteConfigError",
    "RouteSpec",
    "Router",
    "build_router",
    "classifier_location",
    "default_routes",
    "evaluate",
    "format_report",
    "load_routes",
    "read_labelled",
    "train_classifier",
]
