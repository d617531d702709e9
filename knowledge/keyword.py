"""SQL for BM25 keyword search and hybrid fusion, run entirely inside PostgreSQL.

The postings, document frequencies and collection sizes live in tables kept by triggers on `chunks` (migration
0003_knowledge_bm25). A query is parsed by `websearch_to_tsquery('english', ...)`, so its terms are the same
lexemes the chunks' `tsv` column holds and user syntax ("quoted phrases", -negation, or) still parses; its positive
lexemes are OR-ed (questions rarely share every word with the answer) and scored with BM25 (k1 0.9, b 0.4);
lexemes negated with `-word` drop the chunks that contain them.

Speed: each term's postings are stored ordered by impact (BM25 without IDF), so an unfiltered query reads only the
best postings of each term from an index-only range scan instead of every chunk holding a common word: `depth` for
the query's rarest term and fewer, in proportion to IDF, for common words, whose long lists add the most rows to
aggregate but the least score. Hybrid candidates then get their exact score. A filter other than the collection
(source, metadata, page) could remove every pruned candidate, so filtered queries score all postings of the
filtered chunks instead.

The templates use `{where}` (the fixed filter clause, bound values only) and `{scope}` (the collection clause).
"""

from __future__ import annotations

from typing import Literal

Fusion = Literal["convex", "rrf"]
FUSIONS: tuple[str, ...] = ("convex", "rrf")

# Query terms with their IDF per collection; `ceiling` is the best BM25 a chunk could reach for this query (every
# term with tf -> infinity: impact -> k1 + 1 = 1.9), which turns a score into [0, 1].
TERMS = """
q AS (
    SELECT DISTINCT replace(m[2], '''''', '''') AS lexeme, m[1] = '!' AS negated
    FROM regexp_matches(websearch_to_tsquery('english', %(q)s)::text, '(!?)''((?:[^'']|'''')+)''', 'g') AS m
), neg AS (
    SELECT coalesce(array_agg(lexeme), '{{}}'::text[]) AS lexemes FROM q WHERE negated
), terms AS (
    SELECT collection, lexeme, idf, max(idf) OVER () AS top_idf FROM (
        SELECT ts.collection, ts.lexeme, ln(1 + (s.n_chunks - ts.df + 0.5) / (ts.df + 0.5)) AS idf
        FROM (SELECT DISTINCT lexeme FROM q WHERE NOT negated) ql
        JOIN bm25_term_stats ts ON ts.lexeme = ql.lexeme
        JOIN bm25_collection_stats s ON s.collection = ts.collection
        WHERE {scope}) x
), ceiling AS (
    SELECT collection, 1.9 * sum(idf) AS top FROM terms GROUP BY collection
)"""

# Candidates from the highest-impact postings of each term (no filter besides the collection): `depth` postings for
# the query's rarest term, fewer for commoner ones in proportion to their IDF (never under a tenth of `depth`). The
# rarest term is taken over every searched collection: one budget per query, so adding collections to a search
# does not multiply the postings it reads.
PRUNED = """
bm25 AS (
    SELECT p.chunk_id AS id, sum(t.idf * p.impact) AS score
    FROM terms t CROSS JOIN LATERAL (
        SELECT b.chunk_id, b.impact FROM bm25_postings b
        WHERE b.collection = t.collection AND b.lexeme = t.lexeme
        ORDER BY b.impact DESC LIMIT greatest(%(depth)s / 10, ceil(%(depth)s * t.idf / t.top_idf))::int) p
    GROUP BY p.chunk_id ORDER BY score DESC, p.chunk_id LIMIT %(pool)s
)"""

# Every posting of every term, restricted to the filtered chunks first.
EXACT = """
bm25 AS (
    SELECT b.chunk_id AS id, sum(t.idf * b.impact) AS score
    FROM terms t JOIN bm25_postings b ON b.collection = t.collection AND b.lexeme = t.lexeme
    JOIN chunks c ON c.id = b.chunk_id JOIN documents d ON d.id = c.document_id
    WHERE {where}
    GROUP BY b.chunk_id ORDER BY score DESC, b.chunk_id LIMIT %(pool)s
)"""

# Top-n keyword chunks after filters and negations, with the [0, 1] score and rank.
KEYWORD = """
keyword AS (
    SELECT c.id, b.score AS bm25, b.score / ce.top AS norm, row_number() OVER (ORDER BY b.score DESC, c.id) AS rank
    FROM bm25 b JOIN chunks c ON c.id = b.id JOIN documents d ON d.id = c.document_id
    JOIN ceiling ce ON ce.collection = d.collection, neg
    WHERE {where} AND (cardinality(neg.lexemes) = 0 OR NOT tsvector_to_array(c.tsv) && neg.lexemes)
    ORDER BY b.score DESC, c.id LIMIT %(n)s
)"""

# Hybrid candidates (dense top-n and keyword top-n) get both exact scores: cosine similarity and BM25 (looked up
# by primary key, so a dense-only candidate is not scored 0 just because it missed the keyword cut).
CANDIDATES = """
cand AS (
    SELECT id FROM dense UNION SELECT id FROM keyword
), scored AS MATERIALIZED (
    SELECT c.id, dense.rank AS dense_rank, keyword.rank AS keyword_rank,
           1 - (c.embedding <=> %(vec)s) AS cos, coalesce(kb.score, 0) AS bm25
    FROM cand JOIN chunks c ON c.id = cand.id
    LEFT JOIN dense ON dense.id = c.id LEFT JOIN keyword ON keyword.id = c.id, neg,
    LATERAL (SELECT sum(t.idf * b.impact) AS score FROM terms t JOIN bm25_postings b
             ON b.chunk_id = c.id AND b.lexeme = t.lexeme AND b.collection = t.collection) kb
    WHERE cardinality(neg.lexemes) = 0 OR NOT tsvector_to_array(c.tsv) && neg.lexemes
)"""

# Fused relevance per candidate. convex: alpha * min-max(cosine) + (1 - alpha) * BM25 / best BM25 among the
# candidates; rrf: weighted reciprocal rank fusion of the two rankings.
FUSED = {
    "convex": """
fused AS (
    SELECT id, dense_rank, keyword_rank, cos,
           %(alpha)s::float8 * coalesce((cos - min(cos) OVER ()) / nullif(max(cos) OVER () - min(cos) OVER (), 0), 1)
           + (1 - %(alpha)s::float8) * coalesce(bm25 / nullif(max(bm25) OVER (), 0), 0) AS fused
    FROM scored
)""",
    "rrf": """
fused AS (
    SELECT id, dense_rank, keyword_rank, cos,
           coalesce(%(w_dense)s::float8 / (%(rrf_k)s + dense_rank), 0)
           + coalesce(%(w_keyword)s::float8 / (%(rrf_k)s + keyword_rank), 0) AS fused
    FROM scored
)""",
}


def keyword_ctes(where: str, scope: str, exact: bool) -> str:
    """The CTEs that end in `keyword` (id, bm25, norm, rank): terms, BM25 candidates, filtered top-n."""
    body = ",".join((TERMS, EXACT if exact else PRUNED, KEYWORD))
    return body.format(where=where, scope=scope)


def hybrid_ctes(where: str, scope: str, exact: bool, fusion: Fusion) -> str:
    """The CTEs after `dense` that end in `fused` (id, dense_rank, keyword_rank, cos, fused)."""
    if fusion not in FUSED:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
    return keyword_ctes(where, scope, exact) + "," + CANDIDATES + "," + FUSED[fusion]
