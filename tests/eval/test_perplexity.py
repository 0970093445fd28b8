"""Perplexity against transformers' own loss on the same (tiny, random) model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from llmlab.eval.generation import perplexity_report, sliding_nll
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Transformer, torch.nn.Module]:
    import transformers

    from llmlab.weights.hf import save_hf

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=2, max_seq_len=64)
    ours = Transformer(cfg).eval()
    out: Path = tmp_path_factory.mktemp("hf")
    save_hf(ours, out)
    ref = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    return ours, ref


def test_single_window_equals_transformers_loss(pair: tuple) -> None:
    ours, ref = pair
    ids = torch.randint(0, 64, (50,), generator=torch.Generator().manual_seed(1)).tolist()
    nll, n = sliding_nll(ours, ids, window=64, stride=32)
    with torch.no_grad():
        loss = ref(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert n == len(ids) - 1
    assert nll / n == pytest.approx(loss, abs=1e-4)
    rep = perplexity_report(nll, n, n_bytes=100)
    assert rep["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert rep["bits_per_byte"] == pytest.approx(loss * n / (100 * math.log(2)), rel=1e-4)


def test_sliding_window_equals_transformers_recipe(pair: tuple) -> None:
    """The strided recipe from the transformers perplexity guide, with its -100 label masking."""
    ours, ref = pair
    ids = torch.randint(0, 64, (150,), generator=torch.Generator().manual_seed(2))
    window, stride = 40, 16
    nlls, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        trg = end - prev_end
        x = ids[begin:end][None]
        labels = x.clone()
        labels[:, :-trg] = -100
        with torch.no_grad():
            loss = ref(x, labels=labels).loss.item()
        scored = int((labels[:, 1:] != -100).sum())
        nlls += loss * scored
        count += scored
        prev_end = end
        if end == len(ids):
            break
    nll, n = sliding_nll(ours, ids.tolist(), window, stride)
    assert n == count == len(ids) - 1
    assert nll / n == pytest.approx(nlls / count, abs=1e-4)


def test_bad_windows_are_named(pair: tuple) -> None:
    ours, _ = pair
    with pytest.raises(ValueError, match="stride"):
        sliding_nll(ours, [1, 2, 3], window=8, stride=9)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        sliding_nll(ours, [1], window=8, stride=4)
