"""A generative re-ranker: a causal language model reads the query and a candidate image, and a head on the last
token scores the pair (the paper's Table 1 re-ranker role, SEED-LLaMA-8B + LoRA there, which sees the image as
visual tokens).

Two ways to score (``scoring``):

* ``"head"`` (the paper's): the input is ``prompt(query)``, then the candidate's voken tokens, then
  (``image_token``) ``image_tokens`` soft tokens: the candidate's image feature through a trained
  normalise-and-project map to the LM's width. The voken tokens are added to the LM's vocabulary with embeddings
  initialised from the tokenizer's codebook, as in the decoder generator backend
  (:class:`avg_lib.models.generator.DecoderGenerator`, whose prompt handling this reuses: the query's prompt runs
  once and its key/value cache is shared by all K candidates). A small MLP on the last position's hidden state gives the
  score.
* ``"likelihood"``: the score is ``log P(query | image)``, the LM reading ``caption_prompt`` with the candidate's
  soft image tokens at ``{image}`` and the query after it (a generative re-ranker in the literal sense).

An LM that has never seen images cannot read the soft tokens at first (the paper's SEED-LLaMA was pretrained on
its visual tokens). ``align_epochs`` first trains the projection alone, the LM frozen, to caption the training
images (``-log P(caption | image)``, LLaVA's first stage), keeping the epoch with the lowest validation caption loss.
:meth:`LMReranker.fit` then trains the LM, the projection and the head (``epochs``) on groups of one positive and
``negatives`` candidates from AVG's beams, with a softmax cross-entropy over each group's scores (the positive
first).

What it learns from is the caller's choice; :mod:`avg_lib.runs.lmroles` gives it a sample of *training* captions with
AVG's beams over the training gallery (AVG has memorised those captions, so their beams hold the right image plus
its nearest neighbours in voken space: hard negatives), keeps validation for the fusion weight and test untouched.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avg_lib.models.generator import GeneratorConfig, build_generator
from avg_lib.models.generator.training import loop_state, restore_loop_state
from avg_lib.models.selection import BestState
from avg_lib.progress import tqdm


@dataclasses.dataclass(frozen=True)
class LMRerankConfig:
    lm_path: str | None = None  # a local causal LM directory; None = the offline SmolLM2-135M-Instruct
    prompt: str = "Caption: {text}\nImage:"  # the candidate's vokens follow it
    negatives: int = 7  # per positive in a training group (the paper: 7, from the retriever's top 100)
    epochs: int = 1
    batch_size: int = 8  # queries per step (each with 1 + negatives candidates)
    lr: float = 1e-4  # the LM's learning rate
    head_lr: float = 1e-3  # the head's and the image projection's
    image_token: bool = True  # also read the candidate's image feature as soft tokens after its vokens
    image_tokens: int = 1  # soft tokens the image feature becomes
    scoring: str = "head"  # "head": an MLP on the last token; "likelihood": log P(query | image) (see the module)
    caption_prompt: str = "Image:{image}\nCaption:"  # likelihood scoring and alignment; the query follows it
    align_epochs: int = 0  # first train only the image projection to caption the training images, the LM frozen
    align_lr: float = 3e-3
    train_layers: int = 0  # 0: the whole LM trains; k > 0: only its top k layers (the generator's lm_train_layers)
    device: str = "cpu"  # "cuda": train and score on the current CUDA device
    seed: int = 0


class LMReranker:
    """Scores each (query, candidate) pair with a causal LM and a head on its last token (see the module)."""

    name = "lm"
    keep_seconds = 120.0  # the least time between two calls of ``score``'s ``keep`` (each writes a checkpoint)

    def __init__(
        self,
        codebook_size: int,
        depth: int,
        codebooks: np.ndarray | None,
        cfg: LMRerankConfig,
        image_dim: int | None = None,
    ):
        """``image_dim``: the width of the image features it will read (``RerankInputs.image_feats``); required
        with ``cfg.image_token``."""
        if cfg.scoring not in ("head", "likelihood"):
            raise ValueError(f"LMRerankConfig.scoring must be 'head' or 'likelihood', not {cfg.scoring!r}")
        if (cfg.scoring == "likelihood" or cfg.align_epochs) and not cfg.image_token:
            raise ValueError("LMRerankConfig: likelihood scoring and align_epochs read the image; set image_token")
        if cfg.image_token and not image_dim:
            raise ValueError("LMRerankConfig.image_token needs image_dim, the width of the candidates' image features")
        if cfg.image_tokens < 1 or cfg.caption_prompt.count("{image}") != 1:
            raise ValueError("LMRerankConfig: image_tokens must be >= 1 and caption_prompt must hold '{image}' once")
        if cfg.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', not {cfg.device!r}")
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("LMRerankConfig.device is 'cuda' but torch sees no CUDA device; set it to 'cpu'")
        self.cfg = cfg
        gen_cfg = GeneratorConfig(
            backend="decoder", lm_path=cfg.lm_path, prompt=cfg.prompt, lm_train_layers=cfg.train_layers, seed=cfg.seed
        )
        self.gen = build_generator(codebook_size, depth, gen_cfg, codebooks)  # the LM with voken tokens, its prompts
        d = self.gen.lm.config.hidden_size
        torch.manual_seed(cfg.seed)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.image_proj = None
        if cfg.image_token:  # normalised features -> the LM's width, at the scale of its token embeddings
            proj = nn.Linear(image_dim, d * cfg.image_tokens)
            std = float(self.gen.lm.get_input_embeddings().weight.detach()[: self.gen.voken_offset].std())
            nn.init.normal_(proj.weight, std=std / image_dim**0.5)
            nn.init.zeros_(proj.bias)
            self.image_proj = nn.Sequential(nn.LayerNorm(image_dim), proj)
        tok = self.gen.tokenizer
        pre, post = cfg.caption_prompt.split("{image}")
        self._pre = torch.as_tensor(tok(pre)["input_ids"], dtype=torch.long)  # with the LM's start token, if any
        self._post = torch.as_tensor(tok(post, add_special_tokens=False)["input_ids"], dtype=torch.long)
        self.device = torch.device(cfg.device)
        for m in self._modules():
            m.to(self.device).eval()  # training mode only inside fit
        self.history: list[dict] = []

    def _modules(self):
        return [m for m in (self.gen, self.head, self.image_proj) if m is not None]

    def _soft(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, image_tokens, width)`` soft tokens of ``N`` image features (any leading shape, flattened)."""
        soft = self.image_proj(images.reshape(-1, images.shape[-1]).to(self.device, torch.float32))
        return soft.reshape(len(soft), self.cfg.image_tokens, -1)

    def _scores(self, texts: list[str], codes: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """``(len(texts), G)`` scores of the ``G`` candidates of each query: identifiers ``codes`` (len(texts), G, D)
        and, with the image token, their image features ``images`` (len(texts), G, image_dim)."""
        gen = self.gen
        n, group, depth = codes.shape
        if self.cfg.scoring == "likelihood":
            return self.log_likelihood([t for t in texts for _ in range(group)], self._soft(images)).reshape(n, group)
        ctx = gen.repeat(gen.encode(texts), group)
        x = gen.lm.get_input_embeddings()(codes.reshape(n * group, depth).to(self.device) + gen.voken_offset)
        if self.image_proj is not None:
            x = torch.cat([x, self._soft(images).to(x.dtype)], dim=1)
        out = gen.after_prompts(ctx, x, model=gen.lm.base_model)
        return self.head(out.last_hidden_state[:, -1]).reshape(n, group)

    def log_likelihood(self, texts: list[str], soft: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """``(N,)`` ``log P(text + end-of-sequence | caption_prompt with soft[i] at {image})`` for each of ``N``
        texts and soft image tokens ``soft`` (N, image_tokens, width): one sequence per pair, texts padded on the
        right after the fixed-length prefix, so every pair's positions are its own. Run ``chunk`` sequences at a
        time: the LM's logits over its whole vocabulary are large."""
        if len(texts) > chunk:
            parts = [
                self.log_likelihood(texts[i : i + chunk], soft[i : i + chunk]) for i in range(0, len(texts), chunk)
            ]
            return torch.cat(parts)
        gen, n = self.gen, len(texts)
        tok, emb = gen.tokenizer, gen.lm.get_input_embeddings()
        ids = [tok(" " + t, add_special_tokens=False)["input_ids"][: gen.cfg.max_text_len] for t in texts]
        width = max(map(len, ids)) + 1
        cap, mask = torch.full((n, width), gen.eos_id), torch.zeros(n, width, dtype=torch.long)
        for i, x in enumerate(ids):
            cap[i, : len(x) + 1], mask[i, : len(x) + 1] = torch.as_tensor([*x, gen.eos_id]), 1
        cap, mask = cap.to(self.device), mask.to(self.device)
        pre, post = self._pre.to(self.device), self._post.to(self.device)
        after = emb(torch.cat([post.expand(n, -1), cap], 1))
        x = torch.cat([emb(pre).expand(n, -1, -1), soft.to(after.dtype), after], 1)
        attention = torch.cat([torch.ones(n, x.shape[1] - width, dtype=torch.long, device=self.device), mask], 1)
        logits = gen.lm(inputs_embeds=x, attention_mask=attention, logits_to_keep=width + 1).logits[:, :-1].float()
        # log-softmax at the caption's own tokens, over the vocabulary in its contiguous last dimension
        # (cross_entropy over a transposed (N, vocab, width) view took two thirds of a CPU scoring pass on the
        # tests' tiny Llama; on SmolLM2 this scores 1.17x faster, docs/language_models.md)
        lp = logits.gather(2, cap.unsqueeze(2)).squeeze(2) - logits.logsumexp(2)
        return (lp * mask).sum(1)

    def _align(self, inputs, targets, val, progress: bool, ck) -> None:
        """``align_epochs`` of captioning: only the image projection trains (see the module); from ``ck``'s epoch
        on, if it stopped mid-stage."""
        cfg, lm = self.cfg, [p for p in self.gen.parameters() if p.requires_grad]
        for p in lm:
            p.requires_grad_(False)
        opt = torch.optim.AdamW(self.image_proj.parameters(), lr=cfg.align_lr)
        rng, best, steps = np.random.default_rng(cfg.seed), BestState(), -(-len(targets) // cfg.batch_size)
        if ck.loop is not None:
            restore_loop_state(ck.loop, opt, rng, best, self.device)
        bar = tqdm(
            total=cfg.align_epochs * steps,
            initial=ck.epoch * steps,
            desc="LM re-ranker alignment",
            disable=not progress,
        )
        proj, total = {"image_proj": self.image_proj}, cfg.align_epochs + cfg.epochs

        def loss_of(b):
            return -self.log_likelihood(
                [inputs.texts[i] for i in b], self._soft(self._images(inputs, targets[b]))
            ).mean()

        for epoch in range(ck.epoch, cfg.align_epochs):
            row = {"stage": "align", "epoch": epoch + 1, "train_nll": self._epoch(opt, len(targets), loss_of, rng, bar)}
            if val is not None:
                row["val_nll"] = self.caption_nll(val[0])
                best.update(self.image_proj, -row["val_nll"])
            self.history.append(row)
            if epoch + 1 < cfg.align_epochs:
                ck.save_epoch(epoch + 1, total, proj, self.history, loop_state(opt, rng, best, self.device))
        bar.close()
        if best.state is not None:
            self.image_proj.load_state_dict(best.state)
        ck.save_epoch(cfg.align_epochs, total, proj, self.history)  # the stage's selected projection
        for p in lm:
            p.requires_grad_(True)

    @torch.no_grad()
    def caption_nll(self, inputs) -> float:
        """Mean ``-log P(caption | its own image)`` over ``inputs``' queries (each with its target image)."""
        soft = self._soft(self._images(inputs, np.asarray(inputs.targets)))
        return -float(self.log_likelihood(list(inputs.texts), soft).mean())

    def _epoch(self, opt, n: int, loss_of, rng, bar) -> float:
        """One optimiser pass over ``n`` training queries in ``rng``'s order, ``batch_size`` at a time (``loss_of``:
        a batch's indices -> its mean loss); returns the mean loss."""
        order, total = rng.permutation(n), 0.0
        for s in range(0, n, self.cfg.batch_size):
            b = order[s : s + self.cfg.batch_size]
            loss = loss_of(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
            bar.update(1)
        return total / n

    def _images(self, inputs, items: np.ndarray) -> torch.Tensor | None:
        if self.image_proj is None:
            return None
        return torch.from_numpy(np.asarray(inputs.image_feats, dtype=np.float32)[np.maximum(items, 0)])

    def fit(self, inputs, cand, targets=None, progress: bool = False, val=None, checkpoint=None) -> LMReranker:
        """Train on ``inputs``' queries: first ``align_epochs`` of captioning (see the module), then ``epochs`` on
        groups: the query's image, then the first ``negatives`` other images among its candidates (repeating the
        last when the beams hold fewer). ``val``: ``(inputs, cand)`` of validation queries; after each epoch
        ``history`` records the validation caption loss (alignment) or the R@1 of the re-ranked validation beams,
        and the epoch with the best (the earliest of equals) is the one kept. ``checkpoint``: a
        :class:`~avg_lib.models.lmcheckpoint.RerankCheckpoint` written after every epoch, that a later call goes on from
        (one already holding the whole training only restores it). ``train_seconds``: summed over the calls."""
        from avg_lib.models.lmcheckpoint import RerankCheckpoint
        from avg_lib.models.rerank import rerank

        cfg, total = self.cfg, self.cfg.align_epochs + self.cfg.epochs
        ck = checkpoint or RerankCheckpoint(None, dataclasses.asdict(cfg))
        named = {"gen": self.gen, "head": self.head} | (
            {"image_proj": self.image_proj} if self.image_proj is not None else {}
        )
        self.history = ck.restore(named)
        ck.start()
        targets = np.asarray(inputs.targets if targets is None else targets)
        if ck.epoch < cfg.align_epochs:
            self._align(inputs, targets, val, progress, ck)
        codes = np.asarray(inputs.gallery_codes)
        groups = np.empty((len(targets), 1 + cfg.negatives), dtype=np.int64)
        for i, (items, t) in enumerate(zip(cand.items, targets)):
            negs = [int(x) for x in items if x >= 0 and x != t][: cfg.negatives] or [int((t + 1) % len(codes))]
            groups[i] = [t, *negs, *[negs[-1]] * (cfg.negatives - len(negs))]
        head = [p for m in (self.head, self.image_proj) if m is not None for p in m.parameters()]
        lm = [p for p in self.gen.parameters() if p.requires_grad]
        params = [{"params": lm, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}]
        opt = torch.optim.AdamW(params, foreach=True)
        rng, start = np.random.default_rng(cfg.seed), ck.epoch - cfg.align_epochs  # group epochs done
        modules, best = nn.ModuleList(self._modules()), BestState()
        if 0 < start < cfg.epochs:
            restore_loop_state(ck.loop, opt, rng, best, self.device)
        for m in self._modules():
            m.train()
        steps = -(-len(targets) // cfg.batch_size)
        bar = tqdm(total=cfg.epochs * steps, initial=start * steps, desc="LM re-ranker training", disable=not progress)

        def loss_of(b):
            codes_b, images = torch.from_numpy(codes[groups[b]]), self._images(inputs, groups[b])
            scores = self._scores([inputs.texts[i] for i in b], codes_b, images)
            return F.cross_entropy(scores, torch.zeros(len(b), dtype=torch.long, device=scores.device))

        for epoch in range(start, cfg.epochs):
            row = {"epoch": epoch + 1, "train_loss": self._epoch(opt, len(targets), loss_of, rng, bar)}
            if val is not None:
                for m in self._modules():
                    m.eval()
                ranked, _ = rerank(self, *val)
                row["val_R@1"] = 100 * float(np.mean(ranked[:, 0] == np.asarray(val[0].targets)))
                best.update(modules, row["val_R@1"])
                for m in self._modules():
                    m.train()
            self.history.append(row)
            if epoch + 1 < cfg.epochs:
                loop = loop_state(opt, rng, best, self.device)
                ck.save_epoch(cfg.align_epochs + epoch + 1, total, named, self.history, loop)
        bar.close()
        if best.state is not None:
            modules.load_state_dict(best.state)
        if start < cfg.epochs:
            ck.save_epoch(total, total, named, self.history)  # the selected state, for scoring in a later call
        self.train_seconds, self.train_pieces = ck.blob.get("seconds", ck.seconds()), ck.pieces
        for m in self._modules():
            m.eval()
        return self

    @torch.no_grad()
    def score(self, inputs, cand, batch_size: int = 16, progress: bool = False, done=None, keep=None) -> np.ndarray:
        """``(n, K)`` scores of each query's candidates (empty slots, ``-1``, get the score of gallery row 0; the
        caller keeps them last). ``done``: the scores of the first queries from an earlier call, which this one
        goes on after; ``keep(scores so far)`` is called after a batch when ``keep_seconds`` have passed since the
        start or the last call (to write a checkpoint)."""
        items = np.maximum(cand.items, 0)
        codes = torch.from_numpy(np.asarray(inputs.gallery_codes)[items])  # (n, K, D)
        out = [] if done is None else [torch.from_numpy(np.asarray(done, dtype=np.float32))]
        first = 0 if done is None else len(done)
        bar = tqdm(total=len(items), initial=first, desc="LM re-ranker scores", disable=not progress)
        last = time.perf_counter()
        for s in range(first, len(items), batch_size):
            images = self._images(inputs, items[s : s + batch_size])
            out.append(self._scores(inputs.texts[s : s + batch_size], codes[s : s + batch_size], images).float().cpu())
            bar.update(len(out[-1]))
            if keep is not None and time.perf_counter() - last >= self.keep_seconds and s + batch_size < len(items):
                keep(torch.cat(out).numpy())
                last = time.perf_counter()
        bar.close()
        return torch.cat(out).numpy() if out else np.zeros(items.shape, dtype=np.float32)
