"""Batch-1 (and fixed-batch) decoding replayed from a captured CUDA graph.

Batched, trie-constrained beam search does a few hundred small tensor operations per call. On a GPU
each is a kernel launch of a few microseconds, so one query costs the launches, not the arithmetic
(measured on an H200: 8 ms per query at batch 1 against 0.06 ms per query at batch 256, same model).
Every shape in a call is known in advance: the trie's per-depth table widths are static
(:attr:`avg_lib.retrieval.trie.VokenTrie.max_children`), and the text states are padded to
``cfg.max_text_len``. So the whole search, from the text states to the ranked items, is captured once
as a CUDA graph per (trie, batch size) and replayed per call: one launch.

Only the MiniLM backend (the default) is supported: its text states come from a frozen encoder and are
looked up outside the graph. :meth:`GraphedRetriever.static_retrieve` runs the same padded computation
without a graph (any device), which is how the CPU tests check it ranks exactly like
:meth:`~avg_lib.models.generator.VokenGenerator.retrieve`.
"""

from __future__ import annotations

import torch

from avg_lib.retrieval.trie import BeamResult, VokenTrie, beam_search


class GraphedRetriever:
    def __init__(self, gen, trie: VokenTrie, num_beams: int, batch_size: int, capture: bool | None = None):
        if not hasattr(gen, "context"):
            raise ValueError(f"{type(gen).__name__}: graphed decoding needs the minilm backend")
        if trie.depth != gen.depth:
            raise ValueError(f"trie depth {trie.depth} != generator depth {gen.depth}")
        self.gen, self.trie, self.num_beams, self.batch_size = gen.eval(), trie, num_beams, batch_size
        p = next(gen.parameters())
        self.device = p.device
        width = gen.encoder.config.hidden_size
        self.length = gen.cfg.max_text_len
        self.memory = torch.zeros(batch_size, self.length, width, device=self.device, dtype=p.dtype)
        self.mask = torch.zeros(batch_size, self.length, dtype=torch.bool, device=self.device)
        self.mask[:, 0] = True  # rows without a text still attend to one (zero) position: no NaN
        self.graph = self.out = None
        if capture if capture is not None else self.device.type == "cuda":
            self._capture()

    @torch.no_grad()
    def _search(self) -> BeamResult:
        g = self.gen
        ctx = g.repeat(g.context(self.memory, self.mask, project_padding=True), self.num_beams)
        return beam_search(
            g.decode_step(ctx), self.batch_size, self.trie, self.num_beams, g.voken_offset, g.eos_id, self.device
        )

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph (kernel selection, allocator pools)
                self._search()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._search()

    @torch.no_grad()
    def _load(self, texts: list[str]) -> None:
        if not 0 < len(texts) <= self.batch_size:
            raise ValueError(f"{len(texts)} texts for a retriever captured at batch size {self.batch_size}")
        memory, mask = self.gen.encoder_states(texts)
        n, length = mask.shape
        if length > self.length:
            raise ValueError(f"text states of {length} positions exceed max_text_len {self.length}")
        self.memory.zero_()
        self.mask.zero_()
        self.mask[:, 0] = True
        self.memory[:n, :length] = memory
        self.mask[:n, :length] = mask

    def __call__(self, texts: list[str]) -> BeamResult:
        """Ranked items of each text (at most ``batch_size`` texts), from one graph replay (or, without a
        captured graph, :meth:`static_retrieve`)."""
        if self.graph is None:
            return self.static_retrieve(texts)
        self._load(texts)
        self.graph.replay()
        n = len(texts)
        return BeamResult(self.out.items[:n].clone(), self.out.scores[:n].clone(), self.out.codes[:n].clone())

    def static_retrieve(self, texts: list[str]) -> BeamResult:
        """The captured computation run directly: padded text states, all positions projected."""
        self._load(texts)
        res = self._search()
        n = len(texts)
        return BeamResult(res.items[:n], res.scores[:n], res.codes[:n])
