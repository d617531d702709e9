-- BM25 keyword search inside PostgreSQL (issue #3). ts_rank_cd has no IDF, so a common word counted as much as a
-- rare one; and an OR query over the GIN index visits most of a big collection. Instead: an inverted index filled
-- from each chunk's own `tsv` (so the terms are exactly Postgres's 'english' full-text lexemes), holding per
-- (collection, lexeme, chunk) the BM25 term weight without IDF ("impact"), ordered by impact so a query reads only
-- the best postings of each term; plus per-collection document frequencies and sizes for IDF. Triggers on `chunks`
-- keep all three in step inside the writing transaction (ingest COPY, replace, cascade deletes).
-- BM25 parameters k1 = 0.9, b = 0.4 (the Pyserini/Anserini defaults for BEIR).

CREATE TABLE bm25_collection_stats (
    collection text PRIMARY KEY REFERENCES collections(name) ON DELETE CASCADE,
    n_chunks   bigint NOT NULL DEFAULT 0,  -- chunks with at least one lexeme
    total_len  bigint NOT NULL DEFAULT 0   -- lexeme occurrences in them (for the average chunk length)
);

CREATE TABLE bm25_term_stats (
    collection text NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    lexeme     text NOT NULL,
    df         integer NOT NULL,           -- chunks of the collection containing the lexeme
    PRIMARY KEY (collection, lexeme)
);

-- The postings. impact = tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen)), avglen taken when the chunk was
-- written (chunks are size-bounded, so it drifts little); a query's BM25 is sum(idf * impact).
CREATE TABLE bm25_postings (
    chunk_id   bigint NOT NULL,
    lexeme     text NOT NULL,
    collection text NOT NULL,
    tf         integer NOT NULL,
    impact     real NOT NULL,
    -- Covering, so scoring a known chunk (a dense-only hybrid candidate) is an index-only probe per query term.
    PRIMARY KEY (chunk_id, lexeme) INCLUDE (collection, impact)
);
CREATE INDEX bm25_postings_impact_idx ON bm25_postings (collection, lexeme, impact DESC) INCLUDE (chunk_id);

CREATE FUNCTION ragtune_bm25_impact(tf double precision, len double precision, avglen double precision)
RETURNS real LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (tf * 1.9 / (tf + 0.9 * (0.6 + 0.4 * len / greatest(avglen, 1))))::real;

-- New chunks: collection sizes first (one row lock per collection, taken before any term row, so concurrent
-- writers of one collection queue there instead of deadlocking on terms), then postings, then document frequencies.
CREATE FUNCTION ragtune_bm25_chunks_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bm25_collection_stats AS s (collection, n_chunks, total_len)
    SELECT d.collection, count(*), sum(l.len)
    FROM new_chunks n JOIN documents d ON d.id = n.document_id,
         LATERAL (SELECT sum(greatest(cardinality(t.positions), 1)) AS len FROM unnest(n.tsv) t) l
    WHERE l.len > 0
    GROUP BY d.collection ORDER BY d.collection
    ON CONFLICT (collection) DO UPDATE
        SET n_chunks = s.n_chunks + excluded.n_chunks, total_len = s.total_len + excluded.total_len;

    WITH added AS (
        INSERT INTO bm25_postings (chunk_id, lexeme, collection, tf, impact)
        SELECT n.id, t.lexeme, d.collection, greatest(cardinality(t.positions), 1),
               ragtune_bm25_impact(greatest(cardinality(t.positions), 1), l.len,
                                   s.total_len::float8 / greatest(s.n_chunks, 1))
        FROM new_chunks n JOIN documents d ON d.id = n.document_id
             JOIN bm25_collection_stats s ON s.collection = d.collection,
             LATERAL (SELECT sum(greatest(cardinality(t.positions), 1)) AS len FROM unnest(n.tsv) t) l,
             unnest(n.tsv) t
        RETURNING collection, lexeme
    )
    INSERT INTO bm25_term_stats AS ts (collection, lexeme, df)
    SELECT collection, lexeme, count(*) FROM added GROUP BY collection, lexeme ORDER BY collection, lexeme
    ON CONFLICT (collection, lexeme) DO UPDATE SET df = ts.df + excluded.df;
    RETURN NULL;
END $$;

-- Deleted chunks (a replaced file, a deleted document or collection, via cascades): the postings say which
-- collection and lexemes they counted in, even when the document row is already gone.
CREATE FUNCTION ragtune_bm25_chunks_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bm25_collection_stats s SET n_chunks = s.n_chunks - g.n, total_len = s.total_len - g.len
    FROM (SELECT p.collection, count(DISTINCT p.chunk_id) AS n, sum(p.tf) AS len
          FROM bm25_postings p JOIN old_chunks o ON o.id = p.chunk_id GROUP BY p.collection) g
    WHERE s.collection = g.collection;

    UPDATE bm25_term_stats ts SET df = ts.df - g.n
    FROM (SELECT p.collection, p.lexeme, count(*) AS n
          FROM bm25_postings p JOIN old_chunks o ON o.id = p.chunk_id GROUP BY p.collection, p.lexeme) g
    WHERE ts.collection = g.collection AND ts.lexeme = g.lexeme;

    DELETE FROM bm25_term_stats ts
    USING (SELECT DISTINCT p.collection, p.lexeme FROM bm25_postings p JOIN old_chunks o ON o.id = p.chunk_id) g
    WHERE ts.collection = g.collection AND ts.lexeme = g.lexeme AND ts.df <= 0;

    DELETE FROM bm25_postings p USING old_chunks o WHERE p.chunk_id = o.id;
    RETURN NULL;
END $$;

CREATE TRIGGER chunks_bm25_insert AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS new_chunks FOR EACH STATEMENT EXECUTE FUNCTION ragtune_bm25_chunks_inserted();
CREATE TRIGGER chunks_bm25_delete AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS old_chunks FOR EACH STATEMENT EXECUTE FUNCTION ragtune_bm25_chunks_deleted();

-- Backfill what is already stored.
INSERT INTO bm25_collection_stats (collection, n_chunks, total_len)
SELECT d.collection, count(*), sum(l.len)
FROM chunks c JOIN documents d ON d.id = c.document_id,
     LATERAL (SELECT sum(greatest(cardinality(t.positions), 1)) AS len FROM unnest(c.tsv) t) l
WHERE l.len > 0
GROUP BY d.collection;

INSERT INTO bm25_postings (chunk_id, lexeme, collection, tf, impact)
SELECT c.id, t.lexeme, d.collection, greatest(cardinality(t.positions), 1),
       ragtune_bm25_impact(greatest(cardinality(t.positions), 1), l.len, s.total_len::float8 / greatest(s.n_chunks, 1))
FROM chunks c JOIN documents d ON d.id = c.document_id JOIN bm25_collection_stats s ON s.collection = d.collection,
     LATERAL (SELECT sum(greatest(cardinality(t.positions), 1)) AS len FROM unnest(c.tsv) t) l,
     unnest(c.tsv) t;

INSERT INTO bm25_term_stats (collection, lexeme, df)
SELECT collection, lexeme, count(*) FROM bm25_postings GROUP BY collection, lexeme;
