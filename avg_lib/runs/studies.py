"""The settings of the notebooks' studies: one frozen dataclass per profile section from ``visualization`` to
``efficiency`` (the stages' own settings live beside their code; :mod:`avg_lib.runs.config` loads them all)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from avg_lib.models.generator.config import GeneratorConfig


@dataclass(frozen=True)
class VisualizationConfig:  # notebook 03
    queries: tuple[str, ...] = ("red heart", "a cat face")  # typed queries shown with their vokens
    n_prefixes: int = 4  # rows per prefix grid
    map_thumbnails: int = 150  # image thumbnails drawn on the 2-D map


@dataclass(frozen=True)
class BackendsConfig:  # notebook 04, and the backend rows of notebook 06
    compare: bool = True  # train every backend (generative stage) and report validation R@1
    epochs: int = 3  # epochs of that comparison, for a backend without settings of its own below
    t5_settings: dict = field(default_factory=dict)  # the t5 row's generator settings (the paper's generative ones)

    def __post_init__(self):
        unknown = sorted(set(self.t5_settings) - {f.name for f in dataclasses.fields(GeneratorConfig)})
        if unknown:
            raise ValueError(f"t5_settings: {', '.join(unknown)} not generator settings")

    def changes(self, backend: str) -> dict:
        """The generator settings ``backend`` trains with in the comparison: generative stage only."""
        return {
            "epochs": self.epochs,
            **(self.t5_settings if backend == "t5" else {}),
            "backend": backend,
            "disc_epochs": 0,
        }


@dataclass(frozen=True)
class BenchmarkConfig:  # notebook 05 (and avg_lib.tools.speed): batched trie decoding vs prefix_allowed_tokens_fn
    queries: int = 64  # queries timed, on the generator that produced the results (at its temperature)
    batch_sizes: tuple[int, ...] = (1, 64)  # the first is the batch-1 latency the others are compared with
    repeats: int = 3  # best of this many timings
    gallery_size: int = 1000  # avg_lib.tools.speed only (notebook 05 decodes over the test gallery)

    def __post_init__(self):
        if not self.batch_sizes or self.batch_sizes[0] != 1:
            raise ValueError(f"batch_sizes must start with 1 (the batch-1 latency), not {list(self.batch_sizes)}")


@dataclass(frozen=True)
class MainTableConfig:  # notebook 06
    seeds: tuple[int, ...] = (0, 1, 2)  # two-tower and AVG are repeated over these seeds
    seed_pseudo: bool = True  # every seed also trains AVG with pseudo queries
    hkmeans_branching: int = 16  # clusters per node of the hierarchical k-means ids
    random_id_base: int = 10  # digits of the random numeric ids
    baseline_pseudo: bool = False  # also train the generative baselines with pseudo queries
    # every identifier scheme is trained with these seeds; the one with the best validation R@1 over them (the
    # "best other identifiers" of the identifier claim) is then also trained with ``seeds``, so that claim is paired
    baseline_seeds: tuple[int, ...] = (0,)
    pseudo_recipes_compared: tuple[str, ...] = ("borrowed",)  # AVG + pseudo queries by these recipes too


# the ablations of notebook 07, by the name a profile lists them under (``ablations.variants``); each switches one
# component of AVG off and is a paired claim against full AVG over ``ablations.seeds``
ABLATIONS = {
    "semantic_alignment": "without semantic alignment",
    "discriminative": "without discriminative training",
    "codebook_init": "without codebook-embedding init",
    "kmeans_init": "without k-means init",
}


@dataclass(frozen=True)
class AblationsConfig:  # notebook 07
    variants: tuple[str, ...] = tuple(ABLATIONS)  # the ablation table's variants (empty: no table; sweeps still run)
    seeds: tuple[int, ...] = (0, 1, 2)  # every ablation variant and full AVG are trained with each seed
    codebook_sizes: tuple[int, ...] = (64, 1024)  # the tokenizer's codebook_size is added
    voken_lengths: tuple[int, ...] = (2, 4)  # the tokenizer's levels is added
    beam_sizes: tuple[int, ...] = (1, 5, 20, 50)  # the generator's num_beams is added

    def __post_init__(self):
        unknown = sorted(set(self.variants) - set(ABLATIONS))
        if unknown:
            raise ValueError(f"unknown ablation(s) {unknown}; expected some of {', '.join(ABLATIONS)}")

    @property
    def names(self) -> list[str]:
        """The variants' names as tables print them, in the order of :data:`ABLATIONS`."""
        return [name for key, name in ABLATIONS.items() if key in self.variants]


@dataclass(frozen=True)
class EfficiencyConfig:  # notebook 08
    gallery_sizes: tuple[int, ...] = (1000, 10000, 100000)
    batch_size: int = 64  # queries per call for the throughput column
    one_tower_max: int = 100000  # skip the one-tower timing above this gallery size (it is linear)
    device: str = "cpu"  # "cuda" on a GPU machine
    ann: tuple[str, ...] = ("hnsw", "ivfpq")  # FAISS indexes for the two-tower model (avg_lib.evaluation.efficiency)
    ann_max: int = 1000000  # build them up to this gallery size (HNSW's build time grows fastest)
    target_recall: float = 0.95  # each is tuned to this recall@10 of exact search

    def __post_init__(self):
        unknown = set(self.ann) - {"hnsw", "ivfpq"}
        if unknown:
            raise ValueError(f"unknown approximate index(es) {sorted(unknown)}; expected 'hnsw' or 'ivfpq'")
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], not {self.target_recall}")


# the LM re-ranker's settings (avg_lib.models.lmrerank.LMRerankConfig), named here so a profile is checked without torch
LM_RERANK_SETTINGS = (
    "prompt", "negatives", "epochs", "batch_size", "lr", "head_lr", "image_token", "image_tokens", "scoring",
    "caption_prompt", "align_epochs", "align_lr", "train_layers",
)  # fmt: skip


@dataclass(frozen=True)
class LanguageModelsConfig:  # notebook 09 (avg_lib.runs.lmroles): a pretrained causal LM as generator and as re-ranker
    enabled: bool = False  # hours on a 2-core CPU, so the default run leaves it off; profiles lm and lm-gpu turn it on
    seeds: tuple[int, ...] = (0, 1, 2)  # the LM rows and the profile's own generator, paired on these seeds
    lm: str = "smollm2"  # "smollm2" (offline, `setup.sh --lm`) | "tiny-random" (a random 2-layer Llama) | a directory
    device: str = "cpu"  # "cuda": both LMs train and score on the GPU
    generator: dict = field(default_factory=dict)  # generator settings over the profile's, backend decoder implied
    reranker: dict = field(default_factory=dict)  # LM re-ranker settings (avg_lib.models.lmrerank.LMRerankConfig)
    rerank_k: int = 10  # AVG's beams the LM re-ranks (likelihood scoring reads each as a sequence of its own)
    train_queries: int = 2000  # training captions the re-ranker learns from (with AVG's beams for each)

    def __post_init__(self):
        for name, given, known in (
            ("generator", self.generator, {f.name for f in dataclasses.fields(GeneratorConfig)} - {"seed"}),
            ("reranker", self.reranker, set(LM_RERANK_SETTINGS)),
        ):
            unknown = sorted(set(given) - known)
            if unknown:
                raise ValueError(f"{name}: {', '.join(unknown)} not settings of the LM {name} here")
        if {"device", "lm_path", "backend"} & set(self.generator):
            raise ValueError("generator: set the LM with `lm` and the device with `device`, not inside `generator`")
        if self.rerank_k < 2 or self.train_queries < 1 or not self.seeds:
            raise ValueError(f"rerank_k must be at least 2, train_queries at least 1, seeds not empty; got "
                             f"{self.rerank_k}, {self.train_queries}, {list(self.seeds)}")  # fmt: skip
