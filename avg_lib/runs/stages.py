"""The stages that notebooks share, each cache-or-compute on disk (:mod:`avg_lib.cache`) and keyed by
its configuration; a stage's directory sits inside the directory of its input stage.

``joint_space(...)``      data -> frozen features -> two-tower joint space  (notebook 01; reused by 02+)
``voken_tokenizer(...)``  joint space -> RQ-VAE -> unique voken identifiers  (notebook 02; reused by 03+)
``voken_generator(...)``  identifiers + captions -> trained token-to-voken generator  (notebook 04; 05+)

A later notebook asks for the same stage with the same configuration (:func:`avg_lib.runs.pipeline.setup`
builds it from one profile) and gets the cached result in seconds; ``force=True`` recomputes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from avg_lib import cache, data
from avg_lib.data import features
from avg_lib.models import generator, identifiers, tokenizer, two_tower
from avg_lib.runs.config import DataConfig, EncoderConfig, RetrievalConfig
from avg_lib.runs.splits import generator_training_pairs, retrieval_split


@dataclass
class JointSpace:
    ds: data.CaptionedImages
    feats: features.Features
    model: two_tower.TwoTower
    history: pd.DataFrame
    directory: Path
    image: np.ndarray  # (n_images, d) L2-normalised joint embeddings, dataset order
    text: np.ndarray  # (n_captions, d), dataset.captions() order
    text_owner: np.ndarray  # (n_captions,) image index of each caption
    encoder_key: str
    text_encoder: object  # the frozen caption encoder, to embed new queries

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Joint-space embeddings of free-text queries (frozen encoder, then the trained text head)."""
        return two_tower.embed(self.model, text_feats=self.text_encoder.encode_texts(list(texts)))

    def split(self, split: str):
        """``(image_index, image_emb, caption_emb, caption_owner_as_position_in_split)`` of one split."""
        idx, _, _, own = self.feats.split(self.ds, split)
        keep = np.isin(self.text_owner, idx)
        return idx, self.image[idx], self.text[keep], own


def joint_space(
    data_cfg: DataConfig = DataConfig(),
    encoder_cfg: EncoderConfig = EncoderConfig(),
    two_tower_cfg: two_tower.TwoTowerConfig = two_tower.TwoTowerConfig(),
    force: bool = False,
    progress: bool = True,
    ds: data.CaptionedImages | None = None,
) -> JointSpace:
    """Load the data (unless ``ds``, already loaded from ``data_cfg``, is given), extract (or load) its frozen
    features, and train (or load) the two-tower model on them."""
    ds = ds if ds is not None else data.load_dataset(data_cfg.dataset, **data_cfg.kwargs)
    img_enc, txt_enc = features.load_encoders(
        encoder_cfg.name, path=encoder_cfg.path, image_size=encoder_cfg.image_size
    )
    feats = features.extract_features(ds, img_enc, txt_enc, force=force, progress=progress)
    model, history, directory = two_tower.fit_or_load(ds, feats, two_tower_cfg, force=force, progress=progress)
    return JointSpace(
        ds,
        feats,
        model,
        history,
        directory,
        np.load(directory / "image.npy"),
        np.load(directory / "text.npy"),
        feats.text_owner,
        f"{img_enc.key}+{txt_enc.key}",
        txt_enc,
    )


@dataclass
class VokenTokenizer:
    model: tokenizer.RQVAE
    history: pd.DataFrame
    ids: identifiers.Identifiers
    directory: Path
    codebooks: np.ndarray  # (n_books, K, e_dim): initialises the generator's voken embeddings
    error: np.ndarray  # (n_images,) quantisation error ||z - z_q||

    def vokens_of(self, emb: np.ndarray) -> np.ndarray:
        """Raw vokens ``(n, L)`` the tokenizer gives any joint-space vectors (images or, thanks to the
        alignment, caption/query embeddings)."""
        return self.model.encode(torch.as_tensor(np.asarray(emb), dtype=torch.float32)).numpy()


def tokenizer_rows(
    js: JointSpace, split: str, extra_captions: np.ndarray | None = None, extra_owner: np.ndarray | None = None
):
    """Training rows (image embedding, paired caption embedding): one per caption of ``split``,
    plus optional extra (pseudo-query) caption embeddings owned by images of that split."""
    idx = js.ds.split_indices(split)
    keep = np.isin(js.text_owner, idx)
    x, t = js.image[js.text_owner[keep]], js.text[keep]
    if extra_captions is not None:
        x = np.concatenate([x, js.image[extra_owner]])
        t = np.concatenate([t, extra_captions])
    return x, t


def voken_tokenizer(
    js: JointSpace,
    cfg: tokenizer.TokenizerConfig = tokenizer.TokenizerConfig(),
    force: bool = False,
    progress: bool = True,
) -> VokenTokenizer:
    """Train (or load) the RQ-VAE on training images + captions, select on validation loss, and give
    every image of the dataset a unique identifier (collisions resolved, see avg_lib.models.identifiers)."""

    def build(tmp: Path) -> None:
        model, history = tokenizer.train_tokenizer(
            tokenizer_rows(js, "train"), tokenizer_rows(js, "val"), cfg, progress=progress
        )
        tokenizer.save(model, tmp)
        pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
        x = torch.as_tensor(js.image)
        with torch.no_grad():
            z = model.encoder(x)
            raw = model.encode(x)
            err = (z - model.quantizer.decode_indices(raw)).norm(dim=1).numpy()
        ids = identifiers.resolve_collisions(js.ds.ids, raw.numpy(), err, cfg.codebook_size)
        np.save(tmp / "codebooks.npy", model.quantizer.codebooks.detach().numpy())
        np.save(tmp / "codes.npy", ids.codes)
        np.save(tmp / "raw_codes.npy", ids.raw)
        np.save(tmp / "quantisation_error.npy", err)
        (tmp / "vokens.json").write_text(
            json.dumps(
                {
                    "depth": ids.depth,
                    "disambiguated": ids.disambiguated,
                    "codebook_size": cfg.codebook_size,
                    "vokens": dict(zip(ids.ids, ids.codes.tolist())),
                },
                indent=0,
            )
        )

    out = cache.trained(
        js.directory, "rqvae", "voken tokenizer", tokenizer.CACHE_VERSION, asdict(cfg), build, force=force
    )
    meta = json.loads((out / "vokens.json").read_text())
    if list(meta["vokens"]) != js.ds.ids:
        raise RuntimeError(f"{out}: cached vokens belong to other items; rerun with force=True")
    ids = identifiers.Identifiers(
        js.ds.ids, np.load(out / "raw_codes.npy"), np.load(out / "codes.npy"), meta["codebook_size"]
    )
    return VokenTokenizer(
        tokenizer.load(out),
        pd.read_csv(out / "history.csv"),
        ids,
        out,
        np.load(out / "codebooks.npy"),
        np.load(out / "quantisation_error.npy"),
    )


def tokenizer_report(js: JointSpace, vt: VokenTokenizer) -> dict:
    """The per-run numbers of the tokenizer (results/tokenizer.csv): reconstruction, alignment,
    codebook usage and perplexity per level, identifier entropy, collision rates."""
    cfg = vt.model.cfg
    row: dict = {
        "K": cfg.codebook_size,
        "L": cfg.levels,
        "shared_codebook": cfg.shared_codebook,
        "align_weight": cfg.align_weight,
        "align_on": cfg.align_on,
        "kmeans_init": cfg.kmeans_init,
        "epochs_run": len(vt.history),
        "selected_epoch": int(vt.history["val_select"].idxmin()) + 1,
    }
    x = torch.as_tensor(js.image)
    recon = vt.model.decode(torch.as_tensor(vt.ids.raw)).numpy()
    for split in ("val", "test"):
        idx = js.ds.split_indices(split)
        row[f"recon_mse_{split}"] = float(((recon[idx] - js.image[idx]) ** 2).mean())
        keep = np.isin(js.text_owner, idx)
        r = recon[js.text_owner[keep]]
        cos = (r * js.text[keep]).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(js.text[keep], axis=1) + 1e-12)
        row[f"align_cos_{split}"] = float(cos.mean())
        base = (js.image[js.text_owner[keep]] * js.text[keep]).sum(1)
        row[f"image_caption_cos_{split}"] = float(base.mean())  # the same measure for the unquantised image
    del x
    for s in identifiers.level_stats(vt.ids.raw, cfg.codebook_size):
        row[f"used_l{s['level']}"], row[f"perplexity_l{s['level']}"] = s["used"], s["perplexity"]
    row["identifier_entropy_bits"] = identifiers.entropy_bits(vt.ids.raw)
    row["max_entropy_bits"] = float(np.log2(len(vt.ids.raw)))
    test = js.ds.split_indices("test")
    row["collision_rate_all"] = identifiers.collision_rate(vt.ids.raw)
    row["collision_rate_test_gallery"] = identifiers.collision_rate(vt.ids.raw[test])
    row["collision_rate_after"] = identifiers.collision_rate(vt.ids.codes)
    row["identifier_depth"] = vt.ids.depth
    return row


# ------------------------------------------------------------------------------------ generator


@dataclass
class TrainedGenerator:
    """A trained generator as the generator stage returns it."""

    model: generator.VokenGenerator
    history: pd.DataFrame  # one row per epoch (stage, losses, validation metrics)
    directory: Path
    meta: dict  # generator_config.json: the configuration, training pairs, train_seconds, ...

    @property
    def selected(self) -> pd.Series:
        """The history row of the selected epoch (the first with the best validation R@1)."""
        return self.history.loc[self.history["val_R@1"].idxmax()]

    def summary(self) -> dict:
        """What a training table records about this model."""
        best = self.selected
        return {
            "backend": self.model.cfg.backend,
            "pseudo_queries_per_test_image": self.meta["pseudo_queries_per_test_image"],
            "train_pairs": self.meta["train_pairs"],
            "epochs": len(self.history),
            "selected_epoch": int(best["epoch"]),
            "selected_stage": best["stage"],
            "val_R@1": best["val_R@1"],
            "val_rSum": best["val_rSum"],
            "train_seconds": self.meta["train_seconds"],
            "cache": self.directory.name,
        }


def _train_into(tmp: Path, js, vt, cfg, pseudo: int, recipe: dict, text_states, progress: bool, force: bool) -> None:
    """Train one generator of :func:`voken_generator` into the cache folder ``tmp``: training pairs (with ``pseudo``
    pseudo queries per test image), validation split, the model on its training device, resumable from a checkpoint
    beside ``tmp``; saved for the CPU with its history (and, with a discriminative stage, its generative state)."""
    checkpoint = checkpoint_beside(tmp)
    if force:  # a forced retraining starts from scratch, not from an interrupted one's checkpoint
        checkpoint.unlink(missing_ok=True)
    texts, codes = generator_training_pairs(js, vt, pseudo, **recipe)
    val = retrieval_split(js, vt, "val")
    train_imgs = js.ds.split_indices("train")
    gen = generator.build_generator(
        vt.ids.codebook_size,
        vt.ids.depth,
        cfg,
        vt.codebooks,
        prior_head=js.model.text_head if cfg.joint_prior else None,
        text_states=text_states,
    )
    gen, history = generator.train_generator(
        gen.to(generator.training_device(cfg)),
        (texts, codes),
        (val.texts, val.targets, val.gallery_codes),
        train_codes_all=vt.ids.codes[train_imgs],
        progress=progress,
        checkpoint=checkpoint,  # an interrupted training resumes at its last finished epoch
    )
    gen.cpu()  # saved, loaded and evaluated on the CPU whatever trained it
    generator.save(
        gen,
        tmp,
        {
            "pseudo_queries_per_test_image": pseudo,
            "pseudo_recipe": recipe["recipe"] if pseudo else None,
            "train_pairs": len(texts),
            "train_seconds": round(gen.train_seconds, 1),  # summed over the pieces of a resumed training
            "train_pieces": gen.train_pieces,
        },
    )
    pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
    if cfg.disc_epochs:
        torch.save(gen.generative_state, tmp / "generator_generative.pt")


def checkpoint_beside(tmp: Path) -> Path:
    """The checkpoint file of the training that builds the cache folder ``tmp`` (``<name>.partial``, or
    ``<name>.rank<r>.partial`` under torchrun): ``<name>.checkpoint.pt`` beside it, which survives an interruption
    (the next call starts ``tmp`` afresh but resumes from the checkpoint) and is removed when training ends."""
    return tmp.with_name(tmp.name.split(".", 1)[0] + ".checkpoint.pt")


def voken_generator(
    js: JointSpace,
    vt: VokenTokenizer,
    cfg: generator.GeneratorConfig,
    pseudo: int = 0,
    force: bool = False,
    progress: bool = True,
    stage: str = "final",
    ids: identifiers.Identifiers | None = None,
    codebooks: np.ndarray | None = None,
    text_states: generator.TextStateCache | None = None,
    pseudo_recipe: dict | None = None,
) -> TrainedGenerator:
    """Train (or load) a generator on training captions (+ pseudo queries), selected on validation R@1.

    ``pseudo``: pseudo queries per test image, made by :func:`avg_lib.runs.splits.pseudo_queries` with
    ``pseudo_recipe`` (its keyword arguments; default: :class:`~avg_lib.runs.config.RetrievalConfig`'s; a run passes
    its profile's). The borrowed recipe keeps the cache keys it had before recipes existed.

    ``stage="generative"`` returns the best checkpoint of the generative stage alone (the "without
    discriminative training" ablation; identical to a run with ``disc_epochs=0``, see
    :func:`avg_lib.models.generator.train_generator`). ``ids``/``codebooks``: other identifiers than the
    tokenizer's (the baselines' atomic, random or hierarchical-k-means ids; :mod:`avg_lib.models.baselines`).
    ``text_states``: the frozen-encoder state cache to share (see :class:`avg_lib.models.generator.TextStateCache`).

    ``cfg.device`` is left out of the cache key, as the number of torchrun processes is: a generator trained on
    GPUs (``avg train``) is the one a CPU run of the same profile then loads, not retrains."""
    if stage not in ("final", "generative"):
        raise ValueError(f"stage must be 'final' or 'generative', not {stage!r}")
    if ids is not None:
        vt = dataclasses.replace(
            vt,
            ids=ids,
            codebooks=codebooks,
            directory=vt.directory.parent / f"ids-{ids.scheme}-{cache.key(ids.codes.tolist())}",
        )

    recipe = dict(pseudo_recipe or RetrievalConfig().recipe)
    extra = {"pseudo_per_image": pseudo}
    if pseudo and recipe["recipe"] != "borrowed":  # the borrowed recipe keeps the cache keys it always had
        extra["pseudo_recipe"] = recipe

    build = functools.partial(
        _train_into,
        js=js,
        vt=vt,
        cfg=cfg,
        pseudo=pseudo,
        recipe=recipe,
        text_states=text_states,
        progress=progress,
        force=force,
    )

    out = cache.trained(
        vt.directory,
        "generator",
        "voken generator",
        generator.CACHE_VERSION,
        generator.cache_fields(cfg),  # all but where it trained (see below) and other backends' settings
        build,
        extra=extra,
        force=force,
    )
    gen, history = generator.load(out, text_states=text_states), pd.read_csv(out / "history.csv")
    if stage == "generative" and cfg.disc_epochs:
        gen.load_state_dict(torch.load(out / "generator_generative.pt", weights_only=True))
        history = history[history["stage"] == "generative"].reset_index(drop=True)
    return TrainedGenerator(gen, history, out, json.loads((out / "generator_config.json").read_text()))
