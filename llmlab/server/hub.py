"""The models behind the server: loaded once, lazily, and used under one lock.

Two CPU cores serve everyone, so model calls are serialized: concurrency would only make
each call slower. Streaming generation takes the lock per decoding step, so a long chat
does not starve the attention page.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("llmlab.server")
T = TypeVar("T")


@dataclass
class ServerConfig:
    chat_model: str = "smollm2-135m-instruct"
    embed_model: str = "minilm-l6-v2"
    fast_decode: bool = True  # generate with a weight-only int8 copy (~2.5x faster on CPU)
    allow_local_models: bool = True  # accept checkpoint directories on the attention page
    max_text_chars: int = 2000
    max_attention_tokens: int = 64
    max_new_tokens: int = 512
    max_upload_bytes: int = 512 * 1024
    max_session_docs: int = 20
    preload: bool = False


class Hub:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.lock = threading.RLock()  # every model forward pass runs under it
        # Re-entrant: gen_lm's loader loads lm first, under the same lock.
        self._load_lock = threading.RLock()
        self._models: dict[str, Any] = {}
        self._local: OrderedDict[str, Any] = OrderedDict()  # at most 2 local checkpoints

    def _get(self, key: str, make: Any) -> Any:
        if key not in self._models:
            with self._load_lock:
                if key not in self._models:
                    log.info("loading %s ...", key)
                    self._models[key] = make()
                    log.info("loaded %s", key)
        return self._models[key]

    @property
    def loaded(self) -> list[str]:
        return sorted(self._models)

    def lm(self) -> Any:
        """The fp32 chat model: attention maps, next-token distributions, embedding table."""
        import llmlab

        return self._get("lm", lambda: llmlab.load(self.cfg.chat_model))

    def gen_lm(self) -> Any:
        """The model used for generation: an int8 copy when fast_decode, so the fp32 one
        keeps exact numbers for the explain pages."""
        if not self.cfg.fast_decode:
            return self.lm()

        def make() -> Any:
            from llmlab.model.quant import quantize_int8_

            lm = copy.deepcopy(self.lm())
            quantize_int8_(lm.model)
            return lm

        return self._get("gen_lm", make)

    def enc(self) -> Any:
        import llmlab

        return self._get("enc", lambda: llmlab.load(self.cfg.embed_model))

    def attention_model(self, name: str) -> Any:
        """ "smollm2", "minilm", or a local checkpoint directory."""
        if name == "smollm2":
            return self.lm()
        if name == "minilm":
            return self.enc()
        if not self.cfg.allow_local_models:
            raise PermissionError("model: local checkpoints are disabled on this server")
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ValueError(f"model: {name!r} is not 'smollm2', 'minilm' or a checkpoint dir")
        key = str(path.resolve())
        with self._load_lock:
            if key not in self._local:
                import llmlab

                lm = llmlab.load(key)
                if lm.tokenizer is None:
                    raise ValueError(f"model: {name!r} has no tokenizer files")
                self._local[key] = lm
                while len(self._local) > 2:
                    self._local.popitem(last=False)
            return self._local[key]

    def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        with self.lock:
            return fn(*args, **kw)

    def locked_iter(self, it: Iterator[T]) -> Iterator[T]:
        """Advance a generator one step at a time under the lock."""
        while True:
            with self.lock:
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def preload(self) -> None:
        self.lm()
        self.enc()
        if self.cfg.fast_decode:
            self.gen_lm()
