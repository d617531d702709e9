-- Knowledge store: the hash of each chunk's embedding input, so an unchanged chunk (a re-ingested
-- file with one edited section, a re-run evaluation) reuses its stored vector instead of re-embedding.
ALTER TABLE chunks ADD COLUMN content_sha256 bytea;
CREATE INDEX chunks_content_sha256_idx ON chunks (content_sha256) WHERE content_sha256 IS NOT NULL;
