-- The tables of DESIGN.md: knowledge (collections, documents, chunks), shared memory (sessions,
-- messages) and the adapter registry. :embedding_dim is the configured embedder's width.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE collections (
    name            text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_-]{1,100}$'),
    description     text NOT NULL DEFAULT '',
    embedding_model text,
    restricted      boolean NOT NULL DEFAULT false,
    owner           text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE documents (
    id          bigserial PRIMARY KEY,
    collection  text NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    source      text NOT NULL,
    title       text NOT NULL DEFAULT '',
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection, sha256)
);
CREATE INDEX documents_collection_source_idx ON documents (collection, source);
CREATE INDEX documents_metadata_idx ON documents USING gin (metadata jsonb_path_ops);

CREATE TABLE chunks (
    id          bigserial PRIMARY KEY,
    document_id bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal     integer NOT NULL,
    text        text NOT NULL,
    page        integer,
    char_start  integer,
    char_end    integer,
    heading     text NOT NULL DEFAULT '',
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    embedding   vector(:embedding_dim) NOT NULL,
    tsv         tsvector GENERATED ALWAYS AS (to_tsvector('english', heading || ' ' || text)) STORED,
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_embedding_hnsw_idx ON chunks USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64);
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);

CREATE TABLE sessions (
    id            text PRIMARY KEY CHECK (length(id) >= 22),
    owner         text NOT NULL,
    title         text NOT NULL DEFAULT '',
    summary       text NOT NULL DEFAULT '',
    summary_turns integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_owner_idx ON sessions (owner, updated_at DESC);

CREATE TABLE messages (
    id          bigserial PRIMARY KEY,
    session_id  text NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    turn        integer NOT NULL,
    role        text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content     text NOT NULL,
    route       text,
    confidence  real,
    reason      text,
    sources     jsonb NOT NULL DEFAULT '[]'::jsonb,
    adapter     text,
    timings     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (session_id, turn, role)
);

CREATE TABLE adapters (
    name             text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,100}$'),
    base_model       text NOT NULL,
    path             text NOT NULL,
    data_sha256      text,
    rows             integer,
    hyperparameters  jsonb NOT NULL DEFAULT '{}'::jsonb,
    eval_loss_before double precision,
    eval_loss_after  double precision,
    metrics          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ragtune_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO ragtune_meta (key, value) VALUES ('embedding_dim', ':embedding_dim');
