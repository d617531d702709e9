-- Keep each chunk's vector in the table row instead of TOAST (issue #3). pgvector stores vectors EXTERNAL, so a
-- chunk row (text + tsv + 1.5 kB vector) had its vector moved out of line, and every exact scan fetched three pages
-- per row: on a 3,168-chunk collection, where the planner rightly prefers an exact scan to HNSW, a dense query took
-- 8.9 ms; with the vector in the row, 1.1 ms. MAIN still lets PostgreSQL move a very wide vector out as a last resort.
-- Rows written before this migration keep their layout until re-ingested.
ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE MAIN;
