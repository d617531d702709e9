"""The routing decision: which route answers this message, how sure we are, and why.

Two measurable methods feed it: similarity to each route's example messages (works out of the box), and a
classifier trained on labelled messages (used automatically once `ragtune router train` saved one). By default
("combined") the classifier corrects similarity only near the messages it was trained on, so training on one
domain cannot make the router worse on another (see router/classifier.py). The conversation can override the
message alone: a request to rework the last answer is skill work, and a short follow-up inherits the previous
turn's route.

The decision is made per action first (knowledge or skill: summed over each action's routes), then per route
within it: two skill routes splitting a clear skill request ("skill" and "draft") must not hand it to the
default knowledge route. The confidence is the chosen action's probability; below `min_confidence` the
configured default route answers, and the reason says so.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from router import memory
from router.classifier import DEFAULT_SIM_TEMPERATURE, METHODS, RouteClassifier, label_members, route_proba
from router.encoder import QueryEncoder, limit_blas_threads
from router.routes import RouteConfigError, RouteSpec, check_routes
from router.similarity import ExampleIndex, softmax

log = logging.getLogger(__name__)

# Below this calibrated probability the default route answers. With two routes 0.5 is a coin toss; on the
# held-out split of the shipped training data, decisions under 0.6 were right barely more often than not.
DEFAULT_MIN_CONFIDENCE = 0.6
TRANSFORM_WEIGHT = 0.8  # how strongly "make it shorter" after an answer pulls towards skill
FOLLOW_UP_WEIGHT = 0.6  # how strongly a short follow-up keeps the previous route
FOLLOW_UP_WEIGHT_WHEN_CLEAR = 0.35  # ...when the message alone points elsewhere with CLEAR_ELSEWHERE or more
CLEAR_ELSEWHERE = 0.985  # only an overwhelming message-alone signal outweighs the conversation
RETRIEVAL_PIVOT = 0.35  # retrieval strength (best passage cosine) that neither helps nor hurts knowledge
RETRIEVAL_GAIN = 5.0  # log-odds per unit of retrieval strength above/below the pivot (0.65 -> +1.5)
# A weak match only nudges: an empty or off-topic knowledge base must not flip a question. A strong match (cosine
# 0.6+ with a passage of the user's own documents) is good evidence that the documents answer the message.
RETRIEVAL_CAP = (-1.0, 2.0)


@dataclass
class Decision:
    route: str
    action: str
    adapter: str | None
    collection: str | None
    retrieve: bool
    confidence: float
    reason: str
    fallback: bool
    scores: dict[str, float]
    method: str
    latency_ms: float
    nearest: list[dict] = field(default_factory=list)
    memory: str | None = None  # "transform" or "follow-up" when the conversation changed the decision

    def to_dict(self) -> dict:
        return asdict(self)


class Router:
    """Decides the route of each message in a few milliseconds; build it once per process."""

    def __init__(
        self,
        routes: list[RouteSpec],
        embedder,
        *,
        known_adapters: Collection[str] | None = None,
        default_route: str = "knowledge",
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        classifier_path: Path | None = None,
        method: str = "auto",
        threads: int | None = 1,
    ) -> None:
        check_routes(list(routes))
        self.routes = list(routes)
        self.names = [r.name for r in self.routes]
        if known_adapters is not None:
            known = set(known_adapters)
            for route in self.routes:
                if route.adapter is not None and route.adapter not in known:
                    listed = ", ".join(sorted(known)) or "none registered"
                    raise RouteConfigError(
                        f"route {route.name!r} uses adapter {route.adapter!r}, which is not registered "
                        f"(known adapters: {listed}); train it or fix the routes file"
                    )
        if default_route not in self.names:
            names = ", ".join(self.names)
            raise RouteConfigError(f"default route {default_route!r} is not one of the routes ({names})")
        if not 0.0 <= min_confidence <= 1.0:
            raise RouteConfigError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        if method not in ("auto", *METHODS):
            raise RouteConfigError(f"method must be 'auto' or one of {list(METHODS)}, got {method!r}")
        self.default_route = default_route
        self.min_confidence = min_confidence
        limit_blas_threads()
        self.encoder = QueryEncoder(embedder, threads=threads)
        started = time.perf_counter()
        self.example_vectors = self.encoder.encode_many([e for r in self.routes for e in r.examples])
        self.index = ExampleIndex(self.routes, self.example_vectors)
        log.debug("embedded %d route examples in %.2fs", len(self.example_vectors), time.perf_counter() - started)

        self.classifier: RouteClassifier | None = None
        self._members: list[list[int]] = []
        if classifier_path is not None and _classifier_exists(classifier_path):
            self.classifier = RouteClassifier.load(Path(classifier_path))
            if self.classifier.embedder != self.encoder.name:
                raise RouteConfigError(
                    f"router classifier {classifier_path} was trained with embedder {self.classifier.embedder!r} "
                    f"but the configured embedder is {self.encoder.name!r}; run `ragtune router train` again"
                )
            try:
                self._members = label_members(self.classifier.labels, self.routes)
            except ValueError as exc:
                raise RouteConfigError(f"router classifier {classifier_path}: {exc}") from exc
        if method in ("classifier", "combined") and self.classifier is None:
            raise RouteConfigError(f"method {method!r} needs a trained classifier (`ragtune router train FILE`)")
        self.method = method if method != "auto" else (self.classifier.method if self.classifier else "similarity")
        gated = self.classifier is not None and self.classifier.anchors is not None
        # a gated classifier leaves unfamiliar messages to similarity as shipped, so it keeps the shipped calibration
        fitted = self.classifier is not None and not gated
        self.sim_temperature = self.classifier.sim_temperature if fitted else DEFAULT_SIM_TEMPERATURE
        self._covered = {i for group in self._members for i in group}

    # --- probabilities of the message alone --------------------------------------------------------------
    def _probabilities(self, vector: np.ndarray) -> tuple[np.ndarray, list, np.ndarray, str, float | None]:
        """Route probabilities of the message alone, its nearest examples, raw similarities, the method used and
        the classifier's share (None when it had none)."""
        sim_scores, nearest = self.index.explain(vector)
        sim_p = softmax(sim_scores, self.sim_temperature)
        if self.method == "similarity" or self.classifier is None:
            return sim_p, nearest, sim_scores, "similarity", None
        if int(np.argmax(sim_p)) not in self._covered:
            # no classifier label stands for this route (added after training): its examples are the only evidence
            return sim_p, nearest, sim_scores, "similarity", None
        label_p = self.classifier.proba(vector)
        clf_p = route_proba(label_p, sim_p[None, :], self._members, len(self.routes))[0]
        if self.method == "classifier":
            return clf_p, nearest, sim_scores, "classifier", 1.0
        w = float(self.classifier.gate_weight(vector)[0])
        return w * clf_p + (1 - w) * sim_p, nearest, sim_scores, "combined", w

    @property
    def embedder(self):
        """The embedder behind the router, so a caller sharing it can embed a message once for both."""
        return self.encoder.embedder

    def embed(self, message: str) -> np.ndarray:
        """The message's vector, as `decide` would compute it."""
        return self.encoder.encode(message)

    def decide(
        self,
        message: str,
        history: Sequence[dict] = (),
        *,
        retrieval_strength: float | None = None,
        embedding: np.ndarray | None = None,
    ) -> Decision:
        """Route `message`; `embedding` (from `embed`, same embedder) skips embedding it again."""
        started = time.perf_counter()
        if not isinstance(message, str) or not message.strip():
            raise ValueError("cannot route an empty message")
        vector = self.encoder.encode(message) if embedding is None else np.asarray(embedding, dtype=np.float32)
        p, nearest, sim_scores, method, share = self._probabilities(vector)
        notes: list[str] = []
        if method == "combined" and share is not None:
            notes.append(f"the trained classifier's share was {share:.2f} (closeness to its labelled messages)")
        p, used_memory = self._conversation_prior(message, history, p, notes)
        if retrieval_strength is not None and not math.isnan(retrieval_strength):
            p = self._retrieval_shift(p, retrieval_strength, notes)

        best, confidence = self._best(p)
        fallback = confidence < self.min_confidence
        chosen = self.names.index(self.default_route) if fallback else best
        route = self.routes[chosen]
        reason = self._reason(best, confidence, fallback, nearest, sim_scores, p, notes, method)
        method += f"+{used_memory}" if used_memory else ""
        return Decision(
            route=route.name,
            action=route.action,
            adapter=route.adapter,
            collection=route.collection,
            retrieve=bool(route.retrieve),
            confidence=round(confidence, 4),
            reason=reason,
            fallback=fallback,
            scores={name: round(float(v), 4) for name, v in zip(self.names, p, strict=True)},
            method=method,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            nearest=[{"route": r, "example": t, "cosine": round(c, 3)} for r, t, c in nearest],
            memory=used_memory,
        )

    def _best(self, p: np.ndarray) -> tuple[int, float]:
        """The likeliest action (summed over its routes), then its likeliest route; the action's probability."""
        actions = sorted({r.action for r in self.routes})
        mass = {a: float(sum(v for v, r in zip(p, self.routes, strict=True) if r.action == a)) for a in actions}
        action = max(actions, key=lambda a: mass[a])
        best = max((i for i, r in enumerate(self.routes) if r.action == action), key=lambda i: p[i])
        return best, mass[action]

    def _conversation_prior(
        self, message: str, history: Sequence[dict], p: np.ndarray, notes: list[str]
    ) -> tuple[np.ndarray, str | None]:
        """Lean towards skill for a rework of the previous answer, or towards the previous route for a short
        follow-up; which of the two applied ("transform", "follow-up" or None) is returned beside the new scores."""
        previous = memory.last_route(history)
        previous = previous if previous in self.names else None
        if memory.has_answer(history) and memory.is_transform_request(message):
            target = self._skill_target(previous, p)
            if target is not None:
                notes.append(f"asks to rework the previous answer, which is skill work ({self.names[target]})")
                return (1 - TRANSFORM_WEIGHT) * p + TRANSFORM_WEIGHT * _onehot(target, len(p)), "transform"
        elif previous is not None and memory.is_follow_up(message):
            target = self.names.index(previous)
            # a message that on its own clearly belongs elsewhere ("and thanks a lot!") keeps the upper hand
            elsewhere = max((v for i, v in enumerate(p) if i != target), default=0.0)
            weight = FOLLOW_UP_WEIGHT if elsewhere < CLEAR_ELSEWHERE else FOLLOW_UP_WEIGHT_WHEN_CLEAR
            notes.append(f"a short follow-up, so it leans to the previous turn's route ({previous})")
            return (1 - weight) * p + weight * _onehot(target, len(p)), "follow-up"
        return p, None

    def _retrieval_shift(self, p: np.ndarray, strength: float, notes: list[str]) -> np.ndarray:
        """Raise (or lower) the retrieving routes by how well the documents match the message."""
        shift = min(max(RETRIEVAL_GAIN * (strength - RETRIEVAL_PIVOT), RETRIEVAL_CAP[0]), RETRIEVAL_CAP[1])
        boost = np.array([math.exp(shift) if r.retrieve else 1.0 for r in self.routes])
        notes.append(f"retrieval strength {strength:.2f} shifted retrieving routes by {shift:+.2f} log-odds")
        return p * boost / float((p * boost).sum())

    def _skill_target(self, previous: str | None, p: np.ndarray) -> int | None:
        """Rework stays with the previous skill route (its adapter), on a route that does not retrieve when one has
        the same adapter: reworking an answer needs its own sources, not a new search. Otherwise the likeliest
        non-retrieving skill route."""
        skills = [i for i, r in enumerate(self.routes) if r.action == "skill"]
        if not skills:
            return None
        plain = [i for i in skills if not self.routes[i].retrieve]
        if previous is not None and self.routes[self.names.index(previous)].action == "skill":
            before = self.routes[self.names.index(previous)]
            same_adapter = [i for i in plain if self.routes[i].adapter == before.adapter]
            if before.retrieve and same_adapter:
                return max(same_adapter, key=lambda i: p[i])
            return self.names.index(previous)
        return max(plain or skills, key=lambda i: p[i])

    def _reason(self, best, confidence, fallback, nearest, sim_scores, p, notes, method) -> str:
        ranked = ", ".join(f"{n} {v:.2f}" for n, v in sorted(zip(self.names, p, strict=True), key=lambda x: -x[1]))
        near = "; ".join(f'"{t}" ({r}, cos {c:.2f})' for r, t, c in nearest)
        parts = [f"{self.names[best]} with confidence {confidence:.2f} by {method} [{ranked}]"]
        if method != self.method:
            parts.append("the nearest route is unknown to the classifier, so example similarity decides")
        if notes:
            parts.append("; ".join(notes))
        parts.append(f"nearest examples: {near}")
        if self.classifier is not None and method != "similarity":
            sims = ", ".join(f"{n} {s:.2f}" for n, s in zip(self.names, sim_scores, strict=True))
            parts.append(f"example similarity: {sims}")
        if fallback:
            parts.insert(
                0,
                f"low confidence ({confidence:.2f} < {self.min_confidence:.2f}): "
                f"falling back to the default route {self.default_route!r}",
            )
        return ". ".join(parts)


def _onehot(index: int, size: int) -> np.ndarray:
    out = np.zeros(size)
    out[index] = 1.0
    return out


def _classifier_exists(path: Path) -> bool:
    base = Path(path).with_suffix("")
    return base.with_suffix(".json").is_file() and base.with_suffix(".npz").is_file()


def classifier_location(state_dir: Path) -> Path:
    """Where `ragtune router train` stores the classifier and the router finds it."""
    return Path(state_dir) / "router" / "classifier.json"


def build_router(
    embedder,
    *,
    routes_file: Path | None = None,
    state_dir: Path | None = None,
    known_adapters: Collection[str] | None = None,
    default_route: str = "knowledge",
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    use_classifier: bool = True,
    method: str = "auto",
) -> Router:
    """The router a process serves with: configured routes, plus the trained classifier when one is saved."""
    from router.routes import load_routes

    classifier = classifier_location(state_dir) if use_classifier and state_dir is not None else None
    return Router(
        load_routes(routes_file),
        embedder,
        known_adapters=known_adapters,
        default_route=default_route,
        min_confidence=min_confidence,
        classifier_path=classifier,
        method=method,
    )
