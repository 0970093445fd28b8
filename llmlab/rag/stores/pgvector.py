"""PostgreSQL + pgvector store: one table per collection, HNSW cosine index, and BM25 in SQL.

`PgVectorStore(dsn, table="rag_chunks")`; start a throwaway server for tests with
`eval "$(bash scripts/services.sh)"`, which exports LLMLAB_PG_DSN.

Sparse search is the local store's BM25 (bm25s's tokens, Lucene's formula), computed by the
server: `<table>_terms` holds (term, chunk, tf) postings, deleted with their chunk by the
foreign key, and `<table>_stats` the chunk count and total length, kept by a statement
trigger, so every write is one transaction and a query sees consistent statistics.
Postgres's own full-text search was the other candidate; its `ts_rank_cd` has no inverse
document frequency and no length saturation, so a rare, telling word counts no more than
a common one, and the hybrid ranking would differ from the local store's for the same
documents. Here both stores return the same BM25 scores (tested against bm25s).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from llmlab.rag.chunk import Chunk
from llmlab.rag.sparse import K1, B, query_terms, tokenize
from llmlab.rag.stores.base import COLUMNS, ChunkStore, Hit, Where, check_vectors

_FIELDS = ("chunk_id", "doc_id", "source", "title", "text", "start_c", "end_c", "n_tokens", "meta")


class PgVectorStore(ChunkStore):
    def __init__(self, dsn: str, table: str = "rag_chunks", dim: int = 384) -> None:
        try:
            import psycopg  # optional, and most of a second to import: only for this store
            from pgvector.psycopg import register_vector
        except ImportError as e:
            raise RuntimeError("the pgvector store needs `pip install 'psycopg[binary]' pgvector`")\
                from e
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", table):
            raise ValueError(f"table: expected a lower-case SQL identifier, got {table!r}")
        self.table, self.dim = table, dim
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(self.conn)
        self.conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {table} (
                chunk_id text PRIMARY KEY, doc_id text NOT NULL, source text NOT NULL,
                title text NOT NULL, text text NOT NULL, start_c int NOT NULL,
                end_c int NOT NULL, n_tokens int NOT NULL, meta jsonb,
                embedding vector({dim}) NOT NULL)"""
        )
        self.conn.execute(
            f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} "
            "USING hnsw (embedding vector_cosine_ops)"
        )
        self.conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_doc ON {table} (doc_id)")
        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS n_terms int")
        self.conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {table}_terms (
                term text NOT NULL,
                chunk_id text NOT NULL REFERENCES {table} ON DELETE CASCADE,
                tf int NOT NULL, PRIMARY KEY (term, chunk_id))"""
        )
        # the cascade looks postings up by chunk
        self.conn.execute(
            f"CREATE INDEX IF NOT EXISTS {table}_terms_chunk ON {table}_terms (chunk_id)")
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table}_stats (n_docs bigint NOT NULL, "
            "total_len bigint NOT NULL)")
        with self.conn.transaction():
            self.conn.execute(f"LOCK TABLE {table}_stats")
            if self.conn.execute(f"SELECT count(*) FROM {table}_stats").fetchone()[0] == 0:
                self.conn.execute(
                    f"INSERT INTO {table}_stats SELECT count(n_terms), "
                    f"coalesce(sum(n_terms), 0) FROM {table}")
            for op, rows, sign in (("INSERT", "NEW", "+"), ("DELETE", "OLD", "-")):
                fn = f"{table}_stats_{op.lower()}"
                self.conn.execute(
                    f"""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN
                      UPDATE {table}_stats SET
                        n_docs = n_docs {sign} (SELECT count(n_terms) FROM changed),
                        total_len = total_len {sign}
                          (SELECT coalesce(sum(n_terms), 0) FROM changed);
                      RETURN NULL;
                    END $$""")
                self.conn.execute(
                    f"""CREATE OR REPLACE TRIGGER {fn} AFTER {op} ON {table}
                    REFERENCING {rows} TABLE AS changed FOR EACH STATEMENT
                    EXECUTE FUNCTION {fn}()""")
        # pgvector >= 0.8 keeps scanning the HNSW graph until a filtered query has k rows.
        # (older pgvector rejects the setting; filtered queries may then return fewer rows)
        with contextlib.suppress(psycopg.errors.Error):
            self.conn.execute("SET hnsw.iterative_scan = relaxed_order")
        self.conn.execute("SET hnsw.ef_search = 100")

    def _where_sql(self, where: Where | None, alias: str = "") -> tuple[str, list[Any]]:
        if not where:
            return "", []
        parts, args = [], []
        a = f"{alias}." if alias else ""
        for key, want in where.items():
            vals = list(want) if isinstance(want, (list, tuple, set)) else [want]
            if key in COLUMNS:
                parts.append(f"{a}{key} = ANY(%s)")
                args.append([str(v) for v in vals])
            else:  # compare JSON values, so numbers and strings match as in LocalStore
                parts.append(f"{a}meta->%s = ANY(%s::jsonb[])")
                args += [key, [json.dumps(v) for v in vals]]
        return " WHERE " + " AND ".join(parts), args

    @staticmethod
    def _chunk(row: tuple[Any, ...]) -> Chunk:
        cid, did, src, title, text, s, e, n, meta = row
        return Chunk(cid, did, src, title, text, s, e, n, meta or None)

    def add(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        v = check_vectors(chunks, vectors, self.dim)
        tok = tokenize([c.text for c in chunks])
        terms = {i: t for t, i in tok.vocab.items()}
        rows = [
            (c.chunk_id, c.doc_id, c.source, c.title, c.text, c.start, c.end, c.n_tokens,
             json.dumps(c.meta) if c.meta else None, v[i], len(tok.ids[i]))
            for i, c in enumerate(chunks)
        ]
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self.table} ({', '.join(_FIELDS)}, embedding, n_terms) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
            with cur.copy(f"COPY {self.table}_terms (term, chunk_id, tf) FROM STDIN") as cp:
                for c, ids in zip(chunks, tok.ids, strict=True):
                    for t, n in Counter(ids).items():
                        cp.write_row((terms[t], c.chunk_id, n))

    def delete(self, chunk_ids: list[str] | None = None, where: Where | None = None) -> int:
        n = 0
        with self.conn.transaction():
            if chunk_ids:
                n += self.conn.execute(
                    f"DELETE FROM {self.table} WHERE chunk_id = ANY(%s)", [list(chunk_ids)]
                ).rowcount
            if where:
                sql, args = self._where_sql(where)
                n += self.conn.execute(f"DELETE FROM {self.table}{sql}", args).rowcount
        return n

    def update(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        with self.conn.transaction():  # one transaction: readers never see the gap
            self.delete([c.chunk_id for c in chunks])
            self.add(chunks, vectors)

    def get(self, chunk_ids: list[str]) -> list[Chunk | None]:
        rows = self.conn.execute(
            f"SELECT {', '.join(_FIELDS)} FROM {self.table} WHERE chunk_id = ANY(%s)",
            [list(chunk_ids)],
        ).fetchall()
        by_id = {r[0]: self._chunk(r) for r in rows}
        return [by_id.get(i) for i in chunk_ids]

    def get_vectors(self, chunk_ids: list[str]) -> np.ndarray:
        rows = dict(self.conn.execute(
            f"SELECT chunk_id, embedding FROM {self.table} WHERE chunk_id = ANY(%s)",
            [list(chunk_ids)],
        ).fetchall())
        missing = [i for i in chunk_ids if i not in rows]
        if missing:
            raise KeyError(f"unknown chunk ids: {missing[:3]}")
        return np.stack([np.asarray(rows[i].to_numpy(), dtype=np.float32) for i in chunk_ids])

    def search(self, query: np.ndarray, k: int, where: Where | None = None) -> list[Hit]:
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query vector: expected {self.dim} dims, got {q.shape[0]}")
        sql, args = self._where_sql(where)
        rows = self.conn.execute(
            f"SELECT {', '.join(_FIELDS)}, 1 - (embedding <=> %s) FROM {self.table}{sql} "
            "ORDER BY embedding <=> %s LIMIT %s",
            [q, *args, q, k],
        ).fetchall()
        return [Hit(self._chunk(r[:-1]), float(r[-1])) for r in rows]

    def sparse_search(self, query: str, k: int, where: Where | None = None) -> list[Hit]:
        """Lucene BM25 (k1, b of llmlab.rag.sparse) over the chunks matching `where`."""
        counts = Counter(query_terms(query))
        if not counts or k <= 0:
            return []
        sql, args = self._where_sql(where, "c")
        t = self.table
        rows = self.conn.execute(
            f"""WITH q(term, n) AS (SELECT * FROM unnest(%s::text[], %s::int[])),
            s AS (SELECT n_docs, total_len::float8 / greatest(n_docs, 1) AS avgdl
                  FROM {t}_stats),
            d AS (SELECT p.term, count(*) AS df FROM {t}_terms p JOIN q USING (term)
                  GROUP BY p.term),
            scored AS (
              SELECT p.chunk_id, sum(q.n * ln(1 + (s.n_docs - d.df + 0.5) / (d.df + 0.5))
                     * p.tf / (p.tf + %s * (1 - %s + %s * c.n_terms / s.avgdl))) AS score
              FROM {t}_terms p JOIN q USING (term) JOIN d USING (term)
                   JOIN {t} c USING (chunk_id) CROSS JOIN s{sql}
              GROUP BY p.chunk_id)
            SELECT {', '.join('c.' + f for f in _FIELDS)}, scored.score
            FROM scored JOIN {t} c USING (chunk_id)
            ORDER BY scored.score DESC, c.chunk_id LIMIT %s""",
            [list(counts), list(counts.values()), K1, B, B, *args, k],
        ).fetchall()
        return [Hit(self._chunk(r[:-1]), float(r[-1])) for r in rows]

    def chunks_where(self, where: Where) -> list[Chunk]:
        sql, args = self._where_sql(where)
        rows = self.conn.execute(
            f"SELECT {', '.join(_FIELDS)} FROM {self.table}{sql} ORDER BY chunk_id", args
        ).fetchall()
        return [self._chunk(r) for r in rows]

    def __len__(self) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def iter_chunks(self) -> Iterator[Chunk]:
        cur = self.conn.execute(
            f"SELECT {', '.join(_FIELDS)} FROM {self.table} ORDER BY chunk_id"
        )
        for r in cur:
            yield self._chunk(r)

    def drop(self) -> None:
        t = self.table
        self.conn.execute(f"DROP TABLE IF EXISTS {t}_terms, {t}_stats, {t}")
        for op in ("insert", "delete"):
            self.conn.execute(f"DROP FUNCTION IF EXISTS {t}_stats_{op}()")

    def close(self) -> None:
        self.conn.close()
