"""RAG: answer questions from your own documents, grounded and cited.

    from llmlab.rag.pipeline import RagIndex
    from llmlab.rag.answer import answer
    idx = RagIndex.create("my.index"); idx.index(["docs/"])          # incremental
    hits = idx.retrieve("question", method="hybrid", top_k=5)       # dense | bm25 | hybrid
    print(answer("question", hits).text)                             # [n] citations checked

Modules: ingest (files -> documents), chunk (token chunks with char offsets), embed
(MiniLM: onnx int8 | torch), sparse (bm25s tokens, Lucene BM25 over segments), stores
(local dir of immutable segments + faiss HNSW | pgvector with BM25 in SQL), fuse (RRF,
weighted), rerank (SmolLM2 query likelihood or yes/no), answer, evaluate, cli, sessions
(a server's upload sessions and the bounded indexes built on them).
"""
