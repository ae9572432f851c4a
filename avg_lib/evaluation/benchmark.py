"""Decoding speed: our batched trie search against transformers' ``prefix_allowed_tokens_fn`` path.

:func:`hf_reference_retrieve` is the baseline: ``generate()`` with beam search and a
``prefix_allowed_tokens_fn`` that walks the trie in Python, called once per beam per step (the way the
authors' code and most generative-retrieval code decode), on **the same network and weights** as
:meth:`VokenGenerator.retrieve`: the T5 backend's own ``T5ForConditionalGeneration``, the decoder
backend's causal LM (its prompts padded on the left), or, for the MiniLM backend, :class:`VokenDecoderLM`,
a thin transformers wrapper around the generator's decoder (its own key/value cache, reordered by ``generate``
between steps). The generator's logits temperature is
applied by a logits processor placed before the trie constraint, so both decoders score
``log_softmax(logits / T)`` over the full vocabulary. ``tests/test_trie.py`` checks that both rank
identically (at temperature 0.5, at several batch sizes, and with fewer reachable items than beams);
:func:`decoding_benchmark` times both in one run.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from avg_lib.evaluation.efficiency import timed
from avg_lib.retrieval.trie import VokenTrie


def _temperature_processor(temperature: float):
    from transformers import LogitsProcessor

    class TemperatureLogSoftmax(LogitsProcessor):
        """``log_softmax(scores / T)``: on log-probabilities over the full vocabulary this equals
        ``log_softmax(logits / T)`` (a row's constant shift cancels), the generator's own scoring."""

        def __call__(self, input_ids, scores):
            return F.log_softmax(scores / temperature, dim=-1)

    return TemperatureLogSoftmax()


def _voken_decoder_lm(gen):
    """A transformers ``GenerationMixin`` model that runs ``gen``'s (MiniLM backend) decoder: the same
    modules and weights, one new position per step, self-attention keys/values and the text's
    cross-attention keys/values kept in a tuple cache that ``generate`` reorders with the beams."""
    from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class VokenDecoderConfig(PretrainedConfig):
        model_type = "avg-voken-decoder"

    class VokenDecoderLM(PreTrainedModel, GenerationMixin):
        config_class = VokenDecoderConfig

        def __init__(self, g):
            vocab = g.codebook_size + 1
            super().__init__(VokenDecoderConfig(vocab_size=vocab, bos_token_id=g.bos_id, eos_token_id=g.eos_id))
            self.g = g

        @classmethod
        def _supports_default_dynamic_cache(cls):
            return False  # the cache is the tuple below, reordered by _reorder_cache

        def _reorder_cache(self, past, beam_idx):
            return tuple(tuple(x[beam_idx] for x in layer) for layer in past)

        def prepare_inputs_for_generation(
            self, input_ids, attention_mask=None, past_key_values=None, memory=None, memory_mask=None, **kw
        ):
            return {
                "input_ids": input_ids,
                "past_key_values": past_key_values,
                "memory": memory,
                "memory_mask": memory_mask,
            }

        def forward(self, input_ids, attention_mask=None, past_key_values=None, memory=None, memory_mask=None, **kw):
            # attention_mask: the decoder input is never padded (one start token per row); the text's padding
            # is memory_mask
            g = self.g
            t = input_ids.shape[1] - 1  # position of the newest token (the start token is position 0)
            x = (g.embed(input_ids[:, -1]) + g.pos.weight[t]).unsqueeze(1)
            layers = []
            for i, blk in enumerate(g.blocks):
                if past_key_values is None:
                    mk, mv = blk.memory_kv(memory, memory_mask)
                    past = ()
                else:
                    past, (mk, mv) = past_key_values[i][:2], past_key_values[i][2:]
                x, (k, v) = blk(x, (mk, mv), memory_mask, 1, past=past)
                layers.append((k, v, mk, mv))
            logits = g.logits(g.norm(x)) * g.logit_scale
            return CausalLMOutputWithPast(logits=logits, past_key_values=tuple(layers))

    return VokenDecoderLM(gen).eval()


@torch.no_grad()
def hf_reference_retrieve(
    gen, texts: list[str], trie: VokenTrie, num_beams: int, batch_size: int = 16, return_scores: bool = False
):
    """Ranked item indices (n, num_beams) from transformers' generate() with prefix_allowed_tokens_fn, at
    the generator's temperature. Hypotheses that left the trie (score -inf: fewer reachable items than
    beams) and repeats of an item are -1, at the end, as in :func:`avg_lib.retrieval.trie.beam_search`.
    ``return_scores``: also transformers' sequence scores (n, num_beams), in its beam order."""
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

    off, eos, depth = gen.voken_offset, gen.eos_id, trie.depth
    width = {"input": 1}  # columns before the first voken: the start token, or a decoder LM's padded prompts

    def allowed(batch_id, sent):
        prefix = [t - off for t in sent.tolist()[width["input"] :]]
        if len(prefix) >= depth:
            return [eos]
        return [t + off for t in trie.next_tokens(prefix)]

    processors = LogitsProcessorList(
        [_temperature_processor(gen.cfg.temperature), PrefixConstrainedLogitsProcessor(allowed, num_beams)]
    )
    gen.eval()
    is_lm = gen.cfg.backend == "decoder"
    lm = gen.model if gen.cfg.backend == "t5" else gen.lm if is_lm else _voken_decoder_lm(gen)
    out, scores = [], []
    for s in range(0, len(texts), batch_size):
        inputs = _generate_inputs(gen, texts[s : s + batch_size])
        width["input"] = inputs["input_ids"].shape[1] if is_lm else 1  # otherwise sequences start at the start token
        res = lm.generate(
            **inputs,
            num_beams=num_beams,
            num_return_sequences=num_beams,
            max_new_tokens=depth + 1,
            logits_processor=processors,
            length_penalty=0.0,
            early_stopping=True,
            do_sample=False,
            pad_token_id=gen.tokenizer.pad_token_id if is_lm else eos,
            **({"eos_token_id": eos} if is_lm else {}),
            output_scores=True,
            return_dict_in_generate=True,
        )
        w = width["input"]
        codes = res.sequences.reshape(-1, num_beams, res.sequences.shape[-1])[:, :, w : w + depth] - off
        scores.append(res.sequences_scores.reshape(-1, num_beams).cpu())
        out += [_ranked(trie, q, ok) for q, ok in zip(codes.tolist(), torch.isfinite(scores[-1]).tolist())]
    return (np.asarray(out), torch.cat(scores).numpy()) if return_scores else np.asarray(out)


def _generate_inputs(gen, chunk: list[str]) -> dict:
    """``generate()``'s inputs for ``chunk`` by backend: a decoder LM's prompts padded on the left (the vokens
    follow them), T5's encoder inputs, or the start token with the MiniLM backend's text states as memory."""
    if gen.cfg.backend == "decoder":
        enc = gen.prompts(chunk)
    elif gen.cfg.backend == "t5":
        enc = gen.tokenizer(
            chunk, return_tensors="pt", padding=True, truncation=True, max_length=gen.cfg.max_text_len
        ).to(gen.model.device)
    else:
        memory, mask = gen.memory(*gen.encoder_states(chunk))
        start = torch.full((len(chunk), 1), gen.bos_id, dtype=torch.long, device=memory.device)
        return {"input_ids": start, "attention_mask": torch.ones_like(start), "memory": memory, "memory_mask": mask}
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _ranked(trie: VokenTrie, codes: list, finite: list) -> list[int]:
    """One query's item indices in transformers' beam order; hypotheses off the trie and repeats become -1, last."""
    items = [trie.lookup(c) if ok and len(c) == trie.depth else -1 for c, ok in zip(codes, finite)]
    seen, ranked = set(), []
    for i in items:
        ranked.append(i if i >= 0 and i not in seen else -1)
        seen.add(i)
    return [i for i in ranked if i >= 0] + [-1] * ranked.count(-1)


AVG_DECODER = "batched trie (avg_lib)"
HF_DECODER = "prefix_allowed_tokens_fn (transformers)"
GRAPHED_DECODER = "batched trie, CUDA graph (avg_lib)"


def decoding_benchmark(
    gen,
    texts: list[str],
    trie: VokenTrie,
    num_beams: int = 10,
    batch_sizes: tuple[int, ...] = (1, 64),
    repeats: int = 1,
    cuda_graphs: bool | None = None,
) -> pd.DataFrame:
    """The decoders on the same model, gallery and queries, at each batch size, in one run: ours, transformers'
    and, on a GPU (``cuda_graphs``, default: when the model is on CUDA), ours replayed from a captured CUDA
    graph (:mod:`avg_lib.models.generator.graphed`). One row per (decoder, batch size): ``ms_per_query``;
    ``speedup_vs_transformers`` (same batch size); ``batch1_over_batched`` (this decoder's time per query at
    ``batch_sizes[0]`` = 1 over its time per query at this batch size: how far batch-1 decoding is from
    the batched floor); ``identical_rankings`` (fraction of queries ranked exactly like transformers)."""
    from avg_lib.models.generator.graphed import GraphedRetriever

    gen.eval()
    gen.precompute(texts)  # text states of a frozen encoder: query-side features, outside the decoding time
    device = next(gen.parameters()).device
    ours = trie if device.type == "cpu" else copy.deepcopy(trie).to(device)  # the reference walks `trie` on the host
    graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
    rows, per_query = [], {}
    for bs in batch_sizes:
        methods = {
            AVG_DECODER: lambda: gen.retrieve(texts, ours, num_beams=num_beams, batch_size=bs).items.cpu().numpy(),
            HF_DECODER: lambda: hf_reference_retrieve(gen, texts, trie, num_beams, batch_size=bs),
        }
        if graphs:
            graphed = GraphedRetriever(gen, ours, num_beams, bs)
            methods[GRAPHED_DECODER] = lambda: np.concatenate(
                [graphed(texts[s : s + bs]).items.cpu().numpy() for s in range(0, len(texts), bs)]
            )
        found = {}
        for method, fn in methods.items():
            found[method] = fn()  # warm-up, and the rankings compared
            per_query[method, bs] = timed(fn, repeats) / len(texts)
        for method in methods:
            rows.append(
                {
                    "method": method,
                    "batch_size": bs,
                    "queries": len(texts),
                    "gallery_size": trie.size,
                    "num_beams": num_beams,
                    "ms_per_query": 1000 * per_query[method, bs],
                    "queries_per_s": 1 / per_query[method, bs],
                    "speedup_vs_transformers": per_query[HF_DECODER, bs] / per_query[method, bs],
                    "batch1_over_batched": per_query[method, batch_sizes[0]] / per_query[method, bs],
                    "identical_rankings": float((found[method] == found[HF_DECODER]).all(axis=1).mean()),
                }
            )
    return pd.DataFrame(rows)


# matrix products: torch's BLAS calls, and oneDNN's where the profile's cpu_matmul picks it (avg_lib.models.kernels)
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math")


@torch.no_grad()
def decode_profile(gen, texts: list[str], trie, num_beams: int, batch_sizes=(1, 64)) -> pd.DataFrame:
    """Where decoding time goes at each batch size (torch.profiler, CPU): tensor operations per query, and the time
    per query in matrix products, in attention and in everything else (views, indexing, norms, the beam
    bookkeeping), beside the unprofiled wall time per query. Profiled time runs above wall time (the profiler's own
    cost), so compare the columns of one row, and rows with each other.

    And the arithmetic floor: ``mflop_per_query`` (the matrix products' floating-point operations, counted by
    ``torch.utils.flop_counter``; the same at every batch size) over ``peak_gflop_per_s`` (the CPU's rate on one
    large product, measured here) is ``floor_ms``, the time a query would take at peak; ``over_floor`` is the wall
    time's multiple of it."""
    from torch.profiler import ProfilerActivity, profile

    peak = peak_gflop_per_s()
    gen.precompute(texts)  # text states of a frozen encoder: query-side features, outside decoding (as benchmarked)
    with FlopCounterMode(display=False) as flops:  # the same work per query at every batch size: counted once
        gen.retrieve(texts, trie, num_beams, batch_sizes[-1])
    mflop = flops.get_total_flops() / len(texts) / 1e6
    rows = []
    for bs in batch_sizes:
        gen.retrieve(texts[:bs], trie, num_beams, bs)  # warm-up
        wall = timed(lambda bs=bs: gen.retrieve(texts, trie, num_beams, bs)) / len(texts)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for s in range(0, len(texts), bs):
                gen.retrieve(texts[s : s + bs], trie, num_beams, bs)
        events = prof.key_averages()
        per = 1000.0 * len(texts)  # microseconds -> ms per query

        def total(keys=None, ev=events):
            return sum(e.self_cpu_time_total for e in ev if keys is None or e.key in keys)

        mm, att, everything = total(MATMUL_OPS), total(ATTENTION_OPS), total()
        rows.append(
            {
                "batch_size": bs,
                "ops_per_query": sum(e.count for e in events) / len(texts),
                "matmul_calls_per_query": sum(e.count for e in events if e.key in MATMUL_OPS) / len(texts),
                "ms_per_query": 1000 * wall,
                "ms_per_query_profiled": everything / per,
                "matmul_ms": mm / per,
                "attention_ms": att / per,
                "other_ops_ms": (everything - mm - att) / per,
                "mflop_per_query": mflop,
                "peak_gflop_per_s": peak,
                "floor_ms": mflop / peak,
                "over_floor": 1000 * wall / (mflop / peak),
            }
        )
    return pd.DataFrame(rows)


def peak_gflop_per_s(n: int = 2048, repeats: int = 5) -> float:
    """This CPU's float32 rate on one large ``n x n`` matrix product: the faster of torch's default BLAS and, where
    this torch has it, oneDNN (:mod:`avg_lib.models.kernels`)."""
    from avg_lib.models import kernels

    a, b = torch.randn(n, n), torch.randn(n, n)
    candidates = [lambda: a @ b.T] + ([lambda: kernels.linear(a, b, onednn=True)] if kernels.available() else [])

    def best(fn):
        fn()  # warm-up
        return timed(fn, repeats)

    return 2 * n**3 / min(best(fn) for fn in candidates) / 1e9


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """Floating-point operations of oneDNN's linear (``avg_lib.models.kernels``), for the flop counter."""
    return 2 * x_shape[0] * x_shape[1] * w_shape[0]


if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    register_flop_formula(torch.ops.mkldnn._linear_pointwise)(_onednn_linear_flops)
