"""Generative and discriminative training, negative mining, and scoring by constrained decoding."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import torch

from avg_lib.cache import distributed
from avg_lib.models import kernels
from avg_lib.models.generator.base import VokenGenerator
from avg_lib.models.selection import BestState
from avg_lib.progress import tqdm
from avg_lib.retrieval.metrics import recall_at_k
from avg_lib.retrieval.trie import BeamResult, VokenTrie


def listwise_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Paper §4: softmax over [positive, negatives] sequence scores with the positive as target.
    ``pos`` (B,), ``neg`` (B, n). The softmax is applied once (the authors' code applies it twice)."""
    scores = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return (torch.logsumexp(scores, dim=1) - pos).mean()


@torch.no_grad()
def mine_negatives(
    gen: VokenGenerator,
    texts: list[str],
    pos_items: np.ndarray,
    trie: VokenTrie,
    codes: np.ndarray,
    n: int,
    num_beams: int,
    ctx=None,
) -> torch.Tensor:
    """For each text, the first ``n`` beams of constrained beam search over ``trie`` that are not its
    positive item; rows with fewer are padded by repeating the last negative. Returns codes (B, n, D).
    ``ctx``: the texts already encoded (detached), decoded from as they are."""
    if ctx is None:
        res = gen.retrieve(texts, trie, num_beams=num_beams, batch_size=len(texts))
    else:
        was = gen.training
        res = gen.eval().search(ctx, len(texts), trie, num_beams)
        gen.train(was)
    out = np.empty((len(texts), n, codes.shape[1]), dtype=np.int64)
    for b, (items, p) in enumerate(zip(res.items.cpu().numpy(), pos_items)):
        negs = [i for i in items if i >= 0 and i != p][:n]
        if not negs:  # tiny gallery: fall back to random other items
            negs = [int((p + 1 + k) % len(codes)) for k in range(n)]
        negs += [negs[-1]] * (n - len(negs))
        out[b] = codes[negs]
    return torch.from_numpy(out)


def timed_retrieve(
    gen: VokenGenerator, texts: list[str], trie: VokenTrie, num_beams: int | None = None, batch_size: int = 64
) -> tuple[BeamResult, float]:
    """:meth:`VokenGenerator.retrieve` and its mean per-query latency in ms. The latency excludes a
    frozen text encoder (its states are precomputed first), as the two-tower latency excludes
    computing its frozen text features; a trained encoder (t5) is timed."""
    gen.precompute(texts)
    t0 = time.perf_counter()
    res = gen.retrieve(texts, trie, num_beams=num_beams, batch_size=batch_size)
    return res, 1000.0 * (time.perf_counter() - t0) / len(texts)


def evaluate(
    gen: VokenGenerator,
    texts: list[str],
    targets: np.ndarray,
    trie: VokenTrie,
    num_beams: int | None = None,
    batch_size: int = 64,
) -> dict:
    """Recall@1/5/10 (of the beam list) and mean per-query latency (:func:`timed_retrieve`)."""
    res, latency = timed_retrieve(gen, texts, trie, num_beams, batch_size)
    m = recall_at_k(res.items.cpu().numpy(), np.asarray(targets))
    m["latency_ms"] = latency
    return m


def training_device(cfg) -> torch.device:
    """The device a generator with settings ``cfg`` trains on: the CPU, or for ``device="cuda"`` the CUDA
    device of this process (``LOCAL_RANK``'s under torchrun), with a clear error where there is none; ``"auto"``:
    CUDA where there is a device, else the CPU."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("generator.device is 'cuda' but torch sees no CUDA device; set it to 'cpu'")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def data_parallel(model: torch.nn.Module) -> tuple[int, int]:
    """``(rank, world size)`` of a ``torch.distributed`` run (``torchrun``; ``(0, 1)`` otherwise); with several
    ranks, every rank starts from rank 0's parameters."""
    dist = distributed()
    if dist is None:
        return 0, 1
    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p.data, 0)
    return dist.get_rank(), dist.get_world_size()


def _sum_gradients(model: torch.nn.Module) -> None:
    import torch.distributed as dist

    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:  # a rank whose share used no such parameter still takes part
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def _sum_values(values: dict[str, float], device=None) -> dict[str, float]:
    import torch.distributed as dist

    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)  # nccl reduces device tensors
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def train_generator(
    gen: VokenGenerator,
    train: tuple[list[str], np.ndarray],
    val: tuple[list[str], np.ndarray, np.ndarray],
    train_codes_all: np.ndarray | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
):
    """Generative training, then (``disc_epochs`` > 0) the discriminative stage, which starts from the
    generative epoch with the best validation R@1 (at ``disc_lr``); overall selection on validation R@1.

    ``train``: (texts, codes (n, D)) pairs, pseudo queries included if any.
    ``val``: (texts, target gallery positions, gallery codes) for R@1 on the validation gallery.
    ``train_codes_all``: identifiers of the training images, the trie negatives are mined from.
    With ``patience`` > 0 the generative stage stops after that many validations without a better R@1.
    Returns ``(gen with the best state, history)``. With a discriminative stage, ``gen.generative_state``
    is the state dict of the best generative epoch: exactly what the same call with ``disc_epochs=0``
    would return (same seed, same batches), so the "without discriminative training" ablation needs no
    second run. ``gen.train_seconds`` is the wall time of the training, summed over resumed pieces (each piece's
    once-only work included), and ``gen.train_pieces`` the number of calls it took.

    ``checkpoint``: a file written after every epoch but the last (:func:`save_checkpoint`); a call that finds it
    continues after its epoch, with the model, optimizer, random states, selection and history as they were, so
    an interrupted training resumes where it stopped and ends as the uninterrupted one would. The file is
    removed when training ends.
    """
    cfg, t0 = gen.cfg, time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    rank, world = data_parallel(gen)  # with several ranks, every rank starts from rank 0's parameters
    device = next(gen.parameters()).device
    texts, codes = train[0], torch.as_tensor(np.asarray(train[1]), dtype=torch.long, device=device)
    val_trie = VokenTrie(val[2]).to(device)  # the trie's tables live where decoding runs
    # one flat buffer per parameter group: the same update, bit for bit, as AdamW(foreach=True), in far fewer ops
    opt = kernels.FlatAdamW(gen.parameter_groups(), weight_decay=cfg.weight_decay)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    total = cfg.epochs + cfg.disc_epochs
    best, history = BestState(), []
    mining = cfg.disc_epochs and train_codes_all is not None
    negatives, generative_state = _Negatives(train_codes_all, train[1], device) if mining else None, None
    # next epoch, seconds of earlier calls, this call's number, whether the generative stage stopped early
    start, before, pieces, stopped = 0, 0.0, 1, False
    if checkpoint is not None and os.path.isfile(checkpoint):
        done = load_checkpoint(checkpoint, gen, opt, rng, best, history)
        start, before, pieces = done["epoch"], done["seconds"], done["pieces"] + 1
        stopped, generative_state = done["stopped"], done["generative_state"]
    shared = gen.mining_shares_prompts()  # negatives mined from the training pass's prompts (exact: no dropout)
    with amp:  # the backend's once-only work for the generative epochs left, if any (``lm_cache_frozen``)
        frozen = gen.frozen_positives(texts, codes, progress) if start < cfg.epochs and not stopped else None
    bar = tqdm(range(start, total), desc=f"generator ({cfg.backend})", disable=not progress, initial=start, total=total)
    for epoch in bar:
        disc = epoch >= cfg.epochs and negatives is not None
        if stopped and not disc:
            continue
        if epoch == cfg.epochs and disc:  # stage 2 starts from the selected generative checkpoint
            generative_state = best.state  # a copy already: BestState keeps a snapshot, never the live tensors
            gen.load_state_dict(best.state)
            for g in opt.param_groups:
                g["lr"] = cfg.disc_lr
        gen.train()
        order = rng.permutation(len(texts))
        share = order, rank, world
        sums = _epoch(gen, opt, amp, texts, codes, share, negatives if disc else None, frozen, shared)
        row = {
            "epoch": len(history) + 1,  # epochs run: an early stop leaves no gap before the discriminative stage
            "stage": "discriminative" if disc else "generative",
            "train_gen_loss": sums["gen"] / len(order),
            "train_listwise_loss": sums["list"] / len(order),
        }
        if (epoch + 1) % cfg.eval_every == 0 or epoch == total - 1:
            row |= _validate(gen, val, val_trie, best, bar, row["train_gen_loss"])
            stopped = stopped or (not disc and 0 < cfg.patience <= best.since)
        history.append(row)
        if checkpoint is not None and epoch < total - 1 and rank == 0:
            seconds = before + time.perf_counter() - t0
            loop = {"epoch": epoch + 1, "stopped": stopped, "generative_state": generative_state, "pieces": pieces}
            save_checkpoint(checkpoint, gen, opt, rng, best, history, seconds=seconds, **loop)
    gen.train_seconds, gen.train_pieces = before + time.perf_counter() - t0, pieces
    if checkpoint is not None and rank == 0 and os.path.isfile(checkpoint):
        os.remove(checkpoint)
    gen.load_state_dict(best.state)
    gen.generative_state = generative_state if cfg.epochs and negatives is not None else best.state
    return gen.eval(), history


def _validate(gen, val, val_trie, best: BestState, bar, loss: float) -> dict:
    """Validation metrics of ``gen`` as ``val_*`` columns; ``best`` keeps its state if they are the best yet."""
    m = evaluate(gen, val[0], val[1], val_trie)
    best.update(gen, (m["R@1"], m["rSum"]))
    bar.set_postfix(loss=f"{loss:.3f}", val_R1=f"{m['R@1']:.1f}", refresh=False)
    return {f"val_{k}": v for k, v in m.items()}


class _Negatives:
    """What the discriminative stage mines from: the trie of every training image's identifier, the identifiers,
    and the item index of each training pair's image among them (-1 where absent)."""

    def __init__(self, codes_all: np.ndarray, pair_codes: np.ndarray, device):
        self.codes = np.asarray(codes_all)
        self.trie = VokenTrie(self.codes).to(device)
        lookup = {tuple(c): i for i, c in enumerate(self.codes.tolist())}
        self.pos_item = np.array([lookup.get(tuple(c), -1) for c in np.asarray(pair_codes).tolist()])


def _epoch(gen, opt, amp, texts, codes, share, negatives: _Negatives | None, frozen, shared: bool) -> dict:
    """One pass over the training pairs in ``order`` (``share`` = order, rank, world size: this rank takes its share
    of each global batch); the discriminative stage where ``negatives`` is given. Returns the summed generative and
    listwise losses."""
    cfg, device = gen.cfg, codes.device
    order, rank, world = share
    disc = negatives is not None
    sums = {"gen": 0.0, "list": 0.0}
    for s in range(0, len(order), cfg.batch_size):
        b = order[s : s + cfg.batch_size]
        n_global = len(b)
        b = b[rank::world]  # this rank's share of the global batch (all of it in one process)
        if not len(b):  # a last global batch smaller than the number of ranks: take part with no rows
            opt.zero_grad()
            _sum_gradients(gen)
            opt.step()
            continue
        bt, bc = [texts[i] for i in b], codes[b]
        ctx = gen.encode(bt) if disc and shared else None  # the prompts once, for mining and for training
        if disc:
            detached = None if ctx is None else gen.detach(ctx)
            negs = mine_negatives(
                gen,
                bt,
                negatives.pos_item[b],
                negatives.trie,
                negatives.codes,
                cfg.disc_negatives,
                cfg.num_beams,
                ctx=detached,
            ).to(device)
            gen.train()
        with amp:
            if frozen is not None and not disc:
                pos = frozen.sequence_logprob(b).float()
            else:
                ctx = gen.encode(bt) if ctx is None else ctx
                pos = gen.sequence_logprob(ctx, bc).float()
            if disc:
                n = negs.shape[1]
                neg = gen.sequence_logprob(gen.repeat(ctx, n), negs.reshape(-1, gen.depth)).reshape(len(b), n)
        loss = -pos.mean() / (gen.depth + 1)
        sums["gen"] += loss.item() * len(b)
        if disc:
            lw = listwise_loss(pos, neg.float())
            loss = loss + cfg.disc_weight * lw
            sums["list"] += lw.item() * len(b)
        opt.zero_grad()
        # several ranks: each loss is its share's mean, weighted by the share's size; gradients are summed
        # below, so the step is the one process would take on the whole global batch
        (loss * (len(b) / n_global) if world > 1 else loss).backward()
        if world > 1:
            _sum_gradients(gen)
        opt.step()
    return _sum_values(sums, device) if world > 1 else sums


def save_checkpoint(path, gen, opt, rng, best: BestState, history: list, **loop) -> None:
    """Everything :func:`train_generator` needs to go on, written to a temporary file first so that an
    interruption never leaves half a checkpoint. ``loop``: the training loop's own state (``epoch``, the next one;
    ``stopped`` early; the ``generative_state``; ``seconds`` so far; ``pieces``, the calls so far). Parameters that
    do not train (a frozen encoder) are left out of every state saved: a fresh model has them as they are, and the
    file of the default generator shrinks from over 200 MB to 37 MB."""
    frozen = _frozen(gen)
    state = loop_state(opt, rng, best, next(gen.parameters()).device)
    key, best_state, since = state["best"]
    blob = {
        "config": dataclasses.asdict(gen.cfg),
        "model": _without(gen.state_dict(), frozen),
        **state,
        "best": (key, _without(best_state, frozen), since),
        "history": history,
        **loop,
        "generative_state": _without(loop.get("generative_state"), frozen),
    }
    tmp = f"{path}.partial"
    torch.save(blob, tmp)
    os.replace(tmp, path)


def _frozen(gen) -> set[str]:
    """State-dict names of the parameters that do not train."""
    return {n for n, p in gen.named_parameters(remove_duplicate=False) if not p.requires_grad}


def _without(state: dict | None, names: set[str]) -> dict | None:
    return None if state is None else {k: v for k, v in state.items() if k not in names}


def _completed(state: dict | None, full: dict) -> dict | None:
    """A state saved without the frozen parameters, completed with them from ``full`` (in ``full``'s key order)."""
    return None if state is None else {**full, **state}


def loop_state(opt, rng: np.random.Generator, best: BestState, device: torch.device) -> dict:
    """A training loop's state besides the model: the optimiser, the numpy, torch and (on CUDA) CUDA random
    states, and the validation selection; :func:`restore_loop_state` puts it back (shared by the LM re-ranker's
    checkpoint, :mod:`avg_lib.models.lmcheckpoint`)."""
    return {
        "optimizer": opt.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "best": (best.key, best.state, best.since),
    }


def restore_loop_state(state: dict, opt, rng: np.random.Generator, best: BestState, device: torch.device) -> None:
    """Put a :func:`loop_state` back into a fresh loop's optimiser, random generators and selection."""
    opt.load_state_dict(state["optimizer"])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"].cpu())
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    best.key, best.state, best.since = state["best"]


def checkpoint_progress(path) -> dict:
    """How far the training that wrote the :func:`save_checkpoint` file ``path`` got, read without loading its
    tensors (memory-mapped): ``epoch`` (epochs finished), ``epochs`` (generative + discriminative), ``seconds`` of
    training so far and ``pieces``, the calls so far."""
    blob = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    total = blob["config"]["epochs"] + blob["config"]["disc_epochs"]
    return {"epoch": blob["epoch"], "epochs": total, "seconds": blob["seconds"], "pieces": blob["pieces"]}


def load_checkpoint(path, gen, opt, rng, best: BestState, history: list) -> dict:
    """Restore a :func:`save_checkpoint` file into the objects of a fresh :func:`train_generator` call and return
    the loop's own state saved with it; an error naming the file if its settings differ."""
    blob = torch.load(path, map_location=next(gen.parameters()).device, weights_only=False)
    if blob["config"] != dataclasses.asdict(gen.cfg):
        changed = sorted(k for k, v in dataclasses.asdict(gen.cfg).items() if blob["config"].get(k) != v)
        raise ValueError(f"{path}: a checkpoint of other generator settings ({', '.join(changed)}); remove it")
    full = gen.state_dict()  # the frozen parameters as the fresh model has them
    gen.load_state_dict(_completed(blob["model"], full))
    restore_loop_state(blob, opt, rng, best, next(gen.parameters()).device)
    best.state, blob["generative_state"] = _completed(best.state, full), _completed(blob["generative_state"], full)
    history[:] = blob["history"]
    loop = {k: blob[k] for k in ("epoch", "stopped", "generative_state", "seconds")}
    return loop | {"pieces": blob["pieces"]}
