"""Decoding speed: our batched trie search against transformers' ``prefix_allowed_tokens_fn`` path.

:func:`hf_reference_retrieve` is the baseline: ``T5ForConditionalGeneration.generate`` with beam
search and a ``prefix_allowed_tokens_fn`` that walks the trie in Python, called once per beam per
step (the way the authors' code and most generative-retrieval code decode). ``tests/test_trie.py``
checks that it ranks exactly like :meth:`VokenGenerator.retrieve`; :func:`decoding_benchmark`
times both on the same model, gallery and queries in one run.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from .trie import VokenTrie


@torch.no_grad()
def hf_reference_retrieve(gen, texts: list[str], trie: VokenTrie, num_beams: int, batch_size: int = 16) -> np.ndarray:
    """Ranked item indices (n, num_beams) from transformers' generate() with prefix_allowed_tokens_fn."""
    off, eos, depth = gen.voken_offset, gen.eos_id, trie.depth

    def allowed(batch_id, sent):
        prefix = [t - off for t in sent.tolist()[1:]]
        if len(prefix) >= depth:
            return [eos]
        return [t + off for t in trie.next_tokens(prefix)]

    gen.eval()
    out = []
    for s in range(0, len(texts), batch_size):
        enc = gen.tokenizer(texts[s:s + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=gen.cfg.max_text_len)
        seqs = gen.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                  num_beams=num_beams, num_return_sequences=num_beams, max_new_tokens=depth + 1,
                                  prefix_allowed_tokens_fn=allowed, length_penalty=0.0, early_stopping=True,
                                  do_sample=False)
        codes = seqs.reshape(-1, num_beams, seqs.shape[-1])[:, :, 1:depth + 1] - off
        out += [[trie.lookup(c) for c in q.tolist()] for q in codes]
    return np.asarray(out)


def decoding_benchmark(gen, texts: list[str], trie: VokenTrie, num_beams: int = 10,
                       batch_sizes: tuple[int, ...] = (1, 16), repeats: int = 1) -> pd.DataFrame:
    """Queries per second of both decoders at each batch size, on the same model/gallery/queries,
    plus whether their rankings agree. One row per (method, batch size)."""
    rows = []
    for bs in batch_sizes:
        timings = {}
        for method in ("batched trie (avg_lib)", "prefix_allowed_tokens_fn (transformers)"):
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                if method.startswith("batched"):
                    items = gen.retrieve(texts, trie, num_beams=num_beams, batch_size=bs).items.numpy()
                else:
                    items = hf_reference_retrieve(gen, texts, trie, num_beams, batch_size=bs)
                best = min(best, time.perf_counter() - t0)
            timings[method] = (best, items)
        (t_ours, ours), (t_ref, ref) = timings.values()
        agree = float((ours == ref).all(axis=1).mean())
        for method, (t, _) in timings.items():
            rows.append({"method": method, "batch_size": bs, "queries": len(texts), "gallery_size": trie.size,
                         "num_beams": num_beams, "seconds": t, "queries_per_s": len(texts) / t,
                         "speedup_vs_transformers": t_ref / t, "identical_rankings": agree})
    return pd.DataFrame(rows)
