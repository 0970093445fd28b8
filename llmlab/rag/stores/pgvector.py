"""PostgreSQL + pgvector store: one table per collection, HNSW cosine index.

`PgVectorStore(dsn, table="rag_chunks")`; start a throwaway server for tests with
`eval "$(bash scripts/services.sh)"`, which exports LLMLAB_PG_DSN.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from llmlab.rag.chunk import Chunk
from llmlab.rag.stores.base import COLUMNS, ChunkStore, Hit, Where, check_vectors

_FIELDS = ("chunk_id", "doc_id", "source", "title", "text", "start_c", "end_c", "n_tokens", "meta")


class PgVectorStore(ChunkStore):
    def __init__(self, dsn: str, table: str = "rag_chunks", dim: int = 384) -> None:
        try:
            import psycopg
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
        # pgvector >= 0.8 keeps scanning the HNSW graph until a filtered query has k rows.
        # (older pgvector rejects the setting; filtered queries may then return fewer rows)
        with contextlib.suppress(psycopg.errors.Error):
            self.conn.execute("SET hnsw.iterative_scan = relaxed_order")
        self.conn.execute("SET hnsw.ef_search = 100")
        self._bm25: Any = None

    def _where_sql(self, where: Where | None) -> tuple[str, list[Any]]:
        if not where:
            return "", []
        parts, args = [], []
        for key, want in where.items():
            vals = list(want) if isinstance(want, (list, tuple, set)) else [want]
            if key in COLUMNS:
                parts.append(f"{key} = ANY(%s)")
                args.append([str(v) for v in vals])
            else:  # compare JSON values, so numbers and strings match as in LocalStore
                parts.append("meta->%s = ANY(%s::jsonb[])")
                args += [key, [json.dumps(v) for v in vals]]
        return " WHERE " + " AND ".join(parts), args

    @staticmethod
    def _chunk(row: tuple[Any, ...]) -> Chunk:
        cid, did, src, title, text, s, e, n, meta = row
        return Chunk(cid, did, src, title, text, s, e, n, meta or None)

    def add(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        v = check_vectors(chunks, vectors, self.dim)
        rows = [
            (c.chunk_id, c.doc_id, c.source, c.title, c.text, c.start, c.end, c.n_tokens,
             json.dumps(c.meta) if c.meta else None, v[i])
            for i, c in enumerate(chunks)
        ]
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self.table} ({', '.join(_FIELDS)}, embedding) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        self._bm25 = None

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
        self._bm25 = None
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
        """BM25 over the table's texts, built in memory on first use after a change."""
        from llmlab.rag.sparse import BM25Index
        from llmlab.rag.stores.base import matches

        if self._bm25 is None:
            chunks = list(self.iter_chunks())
            self._bm25 = (chunks, BM25Index.build([c.text for c in chunks]))
        chunks, bm = self._bm25
        m = None if not where else np.array([matches(c, where) for c in chunks], dtype=bool)
        rows, scores = bm.search(query, k, m)
        return [Hit(chunks[r], float(s)) for r, s in zip(rows, scores, strict=True)]

    def __len__(self) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def iter_chunks(self) -> Iterator[Chunk]:
        cur = self.conn.execute(
            f"SELECT {', '.join(_FIELDS)} FROM {self.table} ORDER BY chunk_id"
        )
        for r in cur:
            yield self._chunk(r)

    def drop(self) -> None:
        self.conn.execute(f"DROP TABLE IF EXISTS {self.table}")

    def close(self) -> None:
        self.conn.close()
