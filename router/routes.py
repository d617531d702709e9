"""Routes are configuration: a name, a description, example messages, an action and an optional adapter/collection.

A routes file (TOML or YAML) lists `[[routes]]`; by default they are added to the shipped `knowledge` and
`skill` routes (a route with the same name replaces the shipped one). Set `include_defaults = false` to use only
the file's routes. Example (`ragtune route --routes routes.toml "..."`, or the `routes_file` setting):

    [[routes]]
    name = "legal-drafting"
    description = "Contract clauses in the firm's style, with facts from the contracts collection"
    action = "skill"            # answer with the adapter ...
    adapter = "legal-v1"        # ... which must be registered, or the router refuses to start
    retrieve = true             # ... after retrieving from `collection`
    collection = "contracts"
    examples = ["Draft a termination clause for the supplier agreement", "Write an indemnity clause"]
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from router.defaults import DEFAULT_ROUTES_DATA

ACTIONS = ("knowledge", "skill")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ROUTE_KEYS = {"name", "description", "action", "examples", "adapter", "collection", "retrieve"}
_FILE_KEYS = {"routes", "include_defaults"}


class RouteConfigError(ValueError):
    """A route definition is unusable; the message names the route and the problem."""


@dataclass
class RouteSpec:
    """One destination for a message. `retrieve` is True for knowledge; a skill route may set it to also retrieve."""

    name: str
    description: str
    action: Literal["knowledge", "skill"]
    examples: list[str] = field(default_factory=list)
    adapter: str | None = None
    collection: str | None = None
    retrieve: bool | None = None

    def __post_init__(self) -> None:
        if self.retrieve is None:
            self.retrieve = self.action == "knowledge"


def route_from_dict(data: dict, where: str = "routes") -> RouteSpec:
    """Validate one route mapping; errors name the route (or its position) and the reason."""
    if not isinstance(data, dict):
        raise RouteConfigError(f"{where}: each route must be a table/mapping, got {type(data).__name__}")
    label = f"route {data.get('name')!r}" if data.get("name") else where
    unknown = set(data) - _ROUTE_KEYS
    if unknown:
        raise RouteConfigError(f"{label}: unknown keys {sorted(unknown)} (allowed: {sorted(_ROUTE_KEYS)})")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RouteConfigError(f"{where}: route name {name!r} must be 1-64 letters, digits, '-', '_' or '.'")
    action = data.get("action")
    if action not in ACTIONS:
        raise RouteConfigError(f"{label}: action must be one of {list(ACTIONS)}, got {action!r}")
    examples = data.get("examples")
    if not isinstance(examples, list) or not examples:
        raise RouteConfigError(f"{label}: needs a non-empty list of example messages")
    cleaned = []
    for example in examples:
        if not isinstance(example, str) or not example.strip():
            raise RouteConfigError(f"{label}: every example must be a non-empty string, got {example!r}")
        cleaned.append(example.strip())
    retrieve = data.get("retrieve")
    if retrieve is not None and not isinstance(retrieve, bool):
        raise RouteConfigError(f"{label}: retrieve must be true or false, got {retrieve!r}")
    if action == "knowledge" and retrieve is False:
        raise RouteConfigError(f"{label}: a knowledge route always retrieves; use action 'skill' to skip retrieval")
    for key in ("adapter", "collection", "description"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise RouteConfigError(f"{label}: {key} must be a non-empty string, got {value!r}")
    return RouteSpec(
        name=name,
        description=(data.get("description") or "").strip(),
        action=action,
        examples=cleaned,
        adapter=data.get("adapter"),
        collection=data.get("collection"),
        retrieve=retrieve,
    )


def default_routes() -> list[RouteSpec]:
    return [route_from_dict(copy.deepcopy(item), "defaults") for item in DEFAULT_ROUTES_DATA]


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"routes file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            with path.open("rb") as handle:
                return tomllib.load(handle)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:  # pragma: no cover - pyyaml is a dev dependency
                raise RouteConfigError(f"{path}: reading YAML needs pyyaml (`pip install pyyaml`)") from exc
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return data if data is not None else {}
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        if isinstance(exc, RouteConfigError):
            raise
        raise RouteConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError has no common base we can name without importing yaml
        raise RouteConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from exc
    raise RouteConfigError(f"{path}: routes files must end in .toml, .yaml or .yml")


def check_routes(routes: list[RouteSpec]) -> None:
    """Names must be unique and there must be something to choose between."""
    if not routes:
        raise RouteConfigError("no routes configured")
    seen: set[str] = set()
    for route in routes:
        if route.name in seen:
            raise RouteConfigError(f"route {route.name!r} is defined twice")
        seen.add(route.name)
        if route.action == "knowledge" and not route.retrieve:
            raise RouteConfigError(f"route {route.name!r}: a knowledge route always retrieves")
        if not route.examples:
            raise RouteConfigError(f"route {route.name!r} has no example messages")


def load_routes(path: str | Path | None = None) -> list[RouteSpec]:
    """The shipped defaults (path None) or a TOML/YAML routes file, merged over the defaults unless it opts out."""
    if path is None:
        return default_routes()
    path = Path(path)
    data = _read_file(path)
    if not isinstance(data, dict):
        raise RouteConfigError(f"{path}: expected a mapping with a 'routes' list")
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise RouteConfigError(f"{path}: unknown keys {sorted(unknown)} (allowed: {sorted(_FILE_KEYS)})")
    include_defaults = data.get("include_defaults", True)
    if not isinstance(include_defaults, bool):
        raise RouteConfigError(f"{path}: include_defaults must be true or false")
    items = data.get("routes", [])
    if not isinstance(items, list):
        raise RouteConfigError(f"{path}: 'routes' must be a list of routes")
    own = [route_from_dict(item, f"{path}: routes[{i}]") for i, item in enumerate(items)]
    names = [route.name for route in own]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RouteConfigError(f"{path}: route {duplicates[0]!r} is defined twice")
    routes = [r for r in default_routes() if r.name not in names] if include_defaults else []
    routes.extend(own)
    check_routes(routes)
    return routes
