-- Which adapter serves a route (issue #18): `ragtune adapters promote` appends a row, `rollback` marks the newest
-- live row rolled back, so the one before it serves again. Rows are never deleted: the table is the history of what
-- answered each route, and when. `adapter` NULL means the base model (no adapter). A route with no live row is
-- served by the adapter its routes file names.
CREATE TABLE route_adapters (
    id              bigserial PRIMARY KEY,
    route           text NOT NULL CHECK (btrim(route) <> ''),
    adapter         text CHECK (adapter IS NULL OR btrim(adapter) <> ''),
    promoted_at     timestamptz NOT NULL DEFAULT now(),
    promoted_by     text NOT NULL,
    rolled_back_at  timestamptz,
    rolled_back_by  text
);
-- The serving row of a route is its newest live one: this index answers that per turn.
CREATE INDEX route_adapters_live_idx ON route_adapters (route, id DESC) WHERE rolled_back_at IS NULL;
