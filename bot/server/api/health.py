"""`/healthz`, `/v1/me`, and the catch-all that answers unknown `/v1` paths in the API's error format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bot.server.api.common import ApiError, OwnerDep, ServicesDep

router = APIRouter()
unknown_paths = APIRouter()  # included last: it matches every /v1 path the other routers do not


@router.get("/healthz")
def healthz(services: ServicesDep) -> JSONResponse:
    try:
        with services.db.connection(timeout_s=2) as conn:
            conn.execute("SELECT 1")
        database = "ok"
    except Exception as exc:  # the point of a health check is to report, not raise
        database = f"error: {type(exc).__name__}"
    settings = services.settings
    body = {
        "status": "ok" if database == "ok" else "degraded",
        "database": database,
        "generator": settings.openai_base_url or settings.generator_model,
        "adapters": services.conversation.adapters(),
        # route → the adapter serving it now (null: the base model), "promoted" or "configured"
        "routes": {
            route: {"adapter": now.adapter, "source": now.source}
            for route, now in services.conversation.route_adapters().items()
        },
    }
    return JSONResponse(body, status_code=200 if database == "ok" else 503)


@router.get("/v1/me")
def whoami(owner: OwnerDep) -> dict:
    """The caller's owner id: what `restricted_collections` names to let this caller in."""
    return {"owner": owner}


@unknown_paths.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def no_such_endpoint(rest: str, request: Request) -> None:
    """Unknown /v1 paths answer in the API's error format, not with the web UI's page."""
    raise ApiError(404, f"no such endpoint: {request.method} /v1/{rest[:100]} (GET /v1/docs lists them)", "not_found")
