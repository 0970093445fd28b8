"""The code panel: the real source of the library function computing what a page shows."""

from __future__ import annotations

import ast
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llmlab
from llmlab.align import data as align_data
from llmlab.align import dpo, explain_dpo, grpo, heldout, ppo, prefs_view, reward, rl_view
from llmlab.eval import intervals as eintervals
from llmlab.eval import judge as ejudge
from llmlab.eval import report as ereport
from llmlab.eval import tasks as etasks
from llmlab.explain import (
    attention,
    compare,
    decoding,
    embeddings,
    heads,
    kvcache,
    lens,
    next_token,
    patching,
    projection,
    sinks,
    spectrum,
)
from llmlab.foundations import descent, numpy_nn, overfit, token_embeddings, vectors, word2vec
from llmlab.generate import batcher, chat, constrain, engine, sampling
from llmlab.lab import lineage, race
from llmlab.model import hooks, layers, quant
from llmlab.model import positions as mpos
from llmlab.model import transformer as mtransformer
from llmlab.model.cache import KVCache
from llmlab.peft import accounting
from llmlab.peft.lora import LoraLinear
from llmlab.rag import answer, chunk, fuse, pipeline, rerank
from llmlab.tasks import humaneval, metrics
from llmlab.tokenizer import core
from llmlab.train import depth, loop, presets, pretrain, sft, speedrun


@dataclass(frozen=True)
class Table:
    """A module-level table (the presets dict): shown by its assignment's lines."""

    module: str
    name: str


# A page's source key -> the library function behind it.
SOURCES: dict[str, Callable[..., Any] | Table] = {
    "attention.run": attention.run_attention,
    "attention.explicit": layers.Attention._explicit,
    "attention.mode": attention.attention_mode,
    "attention.temperature": attention.softmax_with_temperature,
    "positions.sinusoidal": mpos.sinusoidal_table,
    "positions.rope": mpos.rope_angles,
    "lora.params": accounting.lora_params,
    "lora.compare": accounting.compare_methods,
    "lora.errors": spectrum.rank_r_errors,
    "lora.forward": LoraLinear.forward,
    "sft.run": sft.run_sft,
    "sft.loss": sft.sft_loss,
    "sft.answers": sft.answer_prompts,
    "rag.projection": projection.fit_pca,
    "tokenizer.encode": core.Tokenizer.encode,
    "decoding.next": decoding.next_token,
    "decoding.process": sampling.process_logits,
    "decoding.top_p": sampling.top_p_filter,
    "constrain.mask": constrain.Guide.allowed,
    "constrain.json_schema": constrain.json_schema,
    "embeddings.analogy": embeddings.analogy_vector,
    "embeddings.neighbours": embeddings.cosine_neighbours,
    "chat.stream": chat.stream_chat,
    "foundations.descent": descent.run_descent,
    "foundations.sgd": descent.SGD.step,
    "foundations.adam": descent.Adam.step,
    "foundations.forward": numpy_nn.MLP.forward,
    "foundations.backward": numpy_nn.MLP.backward,
    "foundations.softmax_ce": numpy_nn.softmax_cross_entropy,
    "foundations.dropout": numpy_nn.dropout_mask,
    "foundations.train": numpy_nn.train_mlp,
    "foundations.ridge": overfit.fit_ridge,
    "foundations.legendre": overfit.legendre_features,
    "foundations.sgns": word2vec.sgns_grads,
    "foundations.sgns_step": word2vec.sgns_step,
    "foundations.neighbours": vectors.VectorSpace.neighbours,
    "foundations.analogy": vectors.VectorSpace.analogy,
    "foundations.project": vectors.VectorSpace.project,
    "foundations.token": token_embeddings.TokenSpace.token_id,
    "chat.template": chat.ChatTemplate.encode,
    "batch.decode": batcher.Batcher._decode,
    "batch.emit": batcher.Batcher._emit,
    "rag.chunk": chunk.chunk_text,
    "rag.retrieve": pipeline.RagIndex.retrieve,
    "rag.fuse": fuse.rrf,
    "rag.rerank": rerank.LLMReranker.rerank,
    "rag.answer": answer.AnswerStream.prompt,
    "rag.citations": answer.check_citations,
    "next_token.score": next_token.score_text,
    "next_token.causal": next_token.require_causal,
    "sft.encode_chat": sft.encode_chat,
    "sft.tokenize": sft.tokenize_examples,
    "sft.pack": sft.pack,
    "sft.doc_mask": mtransformer.doc_mask,
    "pretrain.loss": pretrain.next_token_loss,
    "pretrain.fit": loop.Trainer.fit,
    "pretrain.depth": depth.from_depth,
    "pretrain.run": pretrain.run_pretrain,
    "pretrain.race_target": loop.Trainer._bpb,
    "pretrain.race_presets": Table(presets.__name__, "PRESETS"),
    "pretrain.race_switches": speedrun.switches,
    "pretrain.race": race.RaceManager._run_lanes,
    "lineage.pipeline": lineage.pipeline,
    "lineage.parents": lineage.parents,
    "lineage.run_of": lineage.run_of,
    "eval.run_task": etasks.run_task,
    "eval.intervals": eintervals.intervals,
    "eval.pass_at_k": metrics.pass_at_k,
    "eval.failing_line": humaneval.failing_line,
    "eval.summary": ereport.summary,
    "eval.judge_pairs": ejudge.judge_pairs,
    "prefs.sample": align_data.sample_groups,
    "prefs.pair": align_data.pair_groups,
    "prefs.pick": align_data.pick_pair,
    "prefs.score": prefs_view.score_pair,
    "reward.score": reward.ScalarHead.score,
    "reward.loss": reward.reward_loss,
    "reward.baseline": reward.length_baseline,
    "reward.held_out": reward.held_out_metrics,
    "rl.sample": rl_view.sample_group, "rl.verdicts": rl_view.score_details,
    "rl.grpo_step": rl_view.grpo_step, "grpo.advantages": grpo.group_advantages,
    "grpo.loss": grpo.grpo_loss, "grpo.ratio": grpo.importance_ratio,
    "grpo.weights": grpo.aggregation_weights, "grpo.heldout": grpo.HeldOut.__call__,
    "ppo.rewards": ppo.token_rewards, "ppo.gae": ppo.gae, "ppo.loss": ppo.ppo_loss,
    "dpo.token_logprobs": dpo.pair_token_logprobs,
    "dpo.loss": dpo.dpo_loss,
    "dpo.explain": explain_dpo.pair_logratios,
    "dpo.heldout": heldout.task_accuracy,
    "inside.compare": compare.compare_prompts,
    "inside.lens": lens.logit_lens, "inside.lens_logits": lens.lens_logits,
    "inside.hooks": hooks.intervene,
    "inside.roles": heads.head_roles, "inside.role_scores": heads.role_scores,
    "inside.copying": heads.copying_scores,
    "inside.ablate": patching.ablate, "inside.ablation_edit": patching.ablation_edit,
    "inside.patch": patching.patch_sweep, "inside.run_from": patching.run_from,
    "inside.run_patched": patching.run_patched,
    "inside.sink_share": sinks.sink_share, "inside.without_sink": sinks.without_sink,
    "kvcache.memory_curve": kvcache.memory_curve,
    "kvcache.bytes_per_token": kvcache.CacheShape.bytes_per_token.fget,
    "kvcache.cache": KVCache.__init__, "kvcache.update": KVCache.update,
    "kvcache.trace": kvcache.trace_decode, "engine.forward": engine.forward,
    "kvcache.time_cache": kvcache.time_cache, "kvcache.quant_report": kvcache.quant_report,
    "kvcache.layer_outputs": kvcache.layer_outputs, "quant.int4": quant.quantize_groups_int4,
}


def _table_source(t: Table) -> tuple[str, str, int]:
    """(source, qualname, first line) of a table's assignment, found in its module's AST."""
    mod = sys.modules[t.module]
    text = inspect.getsource(mod)
    for node in ast.parse(text).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and t.name in {
                getattr(tg, "id", None) for tg in getattr(node, "targets", [node.target])}:
            lines = text.splitlines(keepends=True)[node.lineno - 1:node.end_lineno]
            return "".join(lines), f"{t.module}.{t.name}", node.lineno
    raise KeyError(f"{t.module}.{t.name}")


def source_of(key: str) -> dict[str, Any]:
    obj = SOURCES[key]
    if isinstance(obj, Table):
        src, qualname, line = _table_source(obj)
        file = Path(inspect.getsourcefile(sys.modules[obj.module]) or "")
        return {"key": key, "qualname": qualname, "file": _rel(file), "line": line,
                "source": src}
    fn = inspect.unwrap(obj)  # past decorators such as torch.inference_mode
    src = inspect.getsource(fn)
    file = Path(inspect.getsourcefile(fn) or "")
    _, line = inspect.getsourcelines(fn)
    return {"key": key, "qualname": fn.__qualname__, "file": _rel(file), "line": line,
            "source": src}


def _rel(file: Path) -> str:
    root = Path(llmlab.__file__).parent.parent
    try:
        return str(file.resolve().relative_to(root.resolve()))
    except ValueError:
        return file.name


def source_keys() -> list[str]:
    return sorted(SOURCES)
