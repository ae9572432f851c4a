"""One frozen run configuration, built from a profile and validated.

A profile is ``profiles/<name>.yaml``; every setting that changes a result lives in one of its
sections, and each section is a frozen dataclass whose fields are the section's keys::

    description: one line
    results_dir: results          # CSVs, figures, executed notebooks, provenance
    extends: default              # optional: start from another profile, merged section by section
    seed: 0                       # the run's seed; every trained stage takes it
    data:        {dataset: emoji, kwargs: {}}                      -> DataConfig
    encoder:     {name: effnet-minilm, path: null, image_size: 224} -> EncoderConfig
    two_tower:   {epochs: 300, ...}                                -> two_tower.TwoTowerConfig
    tokenizer:   {codebook_size: 256, levels: 3, ...}              -> tokenizer.TokenizerConfig
    generator:   {backend: minilm, layers: 2, ...}                 -> generator.GeneratorConfig
    one_tower:   {epochs: 15, ...}                                 -> baselines.OneTowerConfig
    retrieval:   {pseudo_per_image: 2, pseudo_recipe: composed, ...} -> RetrievalConfig
    rerank:      {ks: [10, 50, 100], k: 50, ...}                   -> RerankConfig
    visualization, backends, benchmark, main_table, ablations, efficiency, language_models: the
                 studies of notebooks 03-09 (their dataclasses are in avg_lib.runs.studies)

An unknown section or key, a value of the wrong type, or a ``seed`` inside a section is an error
that names the profile file and the key. :meth:`RunConfig.to_dict` is what is saved as JSON beside
every results table.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from avg_lib.models.baselines import OneTowerConfig
from avg_lib.models.generator.config import GeneratorConfig
from avg_lib.models.tokenizer import TokenizerConfig
from avg_lib.models.two_tower import TwoTowerConfig
from avg_lib.paths import REPO_ROOT
from avg_lib.runs.splits import PSEUDO_RECIPES
from avg_lib.runs.studies import (
    AblationsConfig,
    BackendsConfig,
    BenchmarkConfig,
    EfficiencyConfig,
    LanguageModelsConfig,
    MainTableConfig,
    VisualizationConfig,
)

PROFILE_DIR = REPO_ROOT / "profiles"


class ConfigError(ValueError):
    """A profile that cannot be used; the message names the file and the setting."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "emoji"  # emoji | synthetic | karpathy | folder (avg_lib.data.load_dataset)
    kwargs: dict = field(default_factory=dict)  # the loader's parameters


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "effnet-minilm"  # effnet-minilm (offline) | clip (with path)
    path: str | None = None  # clip: a local directory saved with CLIPModel.save_pretrained()
    image_size: int = 224  # effnet-minilm: input side in pixels


@dataclass(frozen=True)
class RetrievalConfig:
    pseudo_per_image: int = 2  # pseudo queries per test image in the pseudo-query setting
    pseudo_recipe: str = "composed"  # composed (new strings, one target each) | borrowed (the old recipe)
    pseudo_neighbours: int = 5  # composed: training images whose captions vote on the words
    pseudo_words: int = 6  # composed: words per pseudo query
    batch_size: int = 64  # queries decoded together when scoring a split (latency_ms is per query)

    def __post_init__(self):
        if self.pseudo_recipe not in PSEUDO_RECIPES:
            raise ValueError(f"pseudo_recipe must be one of {PSEUDO_RECIPES}, not {self.pseudo_recipe!r}")

    @property
    def recipe(self) -> dict:
        """The pseudo-query recipe as keyword arguments of :func:`avg_lib.runs.splits.pseudo_queries`."""
        return {"recipe": self.pseudo_recipe, "neighbours": self.pseudo_neighbours, "words": self.pseudo_words}


@dataclass(frozen=True)
class RerankConfig:  # the re-ranking stage over AVG's beams (notebook 06)
    ks: tuple[int, ...] = (10, 50, 100)  # beam-list sizes studied (candidate ceiling and every re-ranker)
    k: int = 50  # the main table's re-ranked rows use this many beams
    rerankers: tuple[str, ...] = ("embedding", "cross-encoder")  # each also fused with AVG's log-probability
    fusion_steps: int = 20  # fusion weights tried on validation: 0, 1/steps, ..., 1
    ks_every_seed: bool = False  # the K sweep for every seed; False: the run's seed only, the others decode K = k

    def __post_init__(self):
        if self.k not in self.ks:
            raise ValueError(
                f"k = {self.k} must be one of ks {list(self.ks)} (the main table takes its rows from there)"
            )
        if min(self.ks) < 1 or self.fusion_steps < 1:
            raise ValueError(
                f"ks must be positive and fusion_steps at least 1, got {list(self.ks)}, {self.fusion_steps}"
            )
        unknown = set(self.rerankers) - {"embedding", "cross-encoder"}
        if unknown:
            raise ValueError(f"unknown re-ranker(s) {sorted(unknown)}; expected 'embedding' or 'cross-encoder'")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "encoder": EncoderConfig,
    "two_tower": TwoTowerConfig,
    "tokenizer": TokenizerConfig,
    "generator": GeneratorConfig,
    "one_tower": OneTowerConfig,
    "retrieval": RetrievalConfig,
    "rerank": RerankConfig,
    "visualization": VisualizationConfig,
    "backends": BackendsConfig,
    "benchmark": BenchmarkConfig,
    "main_table": MainTableConfig,
    "ablations": AblationsConfig,
    "efficiency": EfficiencyConfig,
    "language_models": LanguageModelsConfig,
}
SEEDED = (
    "two_tower",
    "tokenizer",
    "generator",
    "one_tower",
)  # sections whose dataclass has a seed (set from the run's)
TOP_LEVEL = ("description", "results_dir", "seed")  # (`extends` is resolved by load_profile)


@dataclass(frozen=True)
class RunConfig:
    profile: str
    description: str
    results_dir: str
    seed: int
    data: DataConfig
    encoder: EncoderConfig
    two_tower: TwoTowerConfig
    tokenizer: TokenizerConfig
    generator: GeneratorConfig
    one_tower: OneTowerConfig
    retrieval: RetrievalConfig
    rerank: RerankConfig
    visualization: VisualizationConfig
    backends: BackendsConfig
    benchmark: BenchmarkConfig
    main_table: MainTableConfig
    ablations: AblationsConfig
    efficiency: EfficiencyConfig
    language_models: LanguageModelsConfig
    overrides: dict = field(default_factory=dict)  # applied on top of the profile (papermill `overrides`)

    def with_seed(self, seed: int) -> RunConfig:
        """The same run with another seed in every trained stage."""
        return dataclasses.replace(
            self, seed=seed, **{s: dataclasses.replace(getattr(self, s), seed=seed) for s in SEEDED}
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ profiles


def profile_path(name: str) -> Path:
    return PROFILE_DIR / f"{name}.yaml"


def known_profiles() -> list[str]:
    return [p.stem for p in sorted(PROFILE_DIR.glob("*.yaml"))]


def merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``: a section (dict) present in both is merged key by key, anything else replaced."""
    out = dict(base)
    for k, v in top.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dropped_by(base: dict, top: dict) -> list[str]:
    """The settings of ``base`` that merging ``top`` over it loses: a setting whose value is a mapping (such as
    ``data.kwargs``) is replaced whole, not merged, so keys the new mapping leaves out are gone."""
    lost = []
    for sec, values in top.items():
        if not (isinstance(values, dict) and isinstance(base.get(sec), dict)):
            continue
        for key, value in values.items():
            old = base[sec].get(key)
            if isinstance(value, dict) and isinstance(old, dict):
                lost += [f"{sec}.{key}.{k} (was {old[k]!r})" for k in old if k not in value]
    return lost


def load_profile(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """The profile as a plain dict, with ``extends`` resolved (not validated: see :func:`load_config`)."""
    path = profile_path(name)
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r} ({path} not found); known profiles: {', '.join(known_profiles())}")
    if name in _seen:
        raise ConfigError(f"{path}: profiles extend each other in a cycle: {' -> '.join((*_seen, name))}")
    try:
        prof = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(prof, dict):
        raise ConfigError(f"{path}: a profile is a mapping of sections, not {type(prof).__name__}")
    base = prof.pop("extends", None)
    return merge(load_profile(base, (*_seen, name)), prof) if base is not None else prof


def load_config(name: str, overrides: dict | None = None) -> RunConfig:
    """Build and validate the run configuration of profile ``name`` (plus ``overrides``, merged like a
    profile that extends it)."""
    overrides = dict(overrides or {})
    where = str(profile_path(name)) + (" + overrides" if overrides else "")
    base = load_profile(name)
    lost = dropped_by(base, overrides)
    if lost:  # the one-level merge: an override's mapping replaces the profile's (what an earlier scale run tripped on)
        warnings.warn(
            f"{where}: the overrides replace whole mappings and drop {', '.join(lost)}; "
            "repeat those keys in the override to keep them",
            stacklevel=2,
        )
    return from_dict(merge(base, overrides), name, where, overrides)


def from_dict(prof: dict, name: str = "custom", where: str = "<dict>", overrides: dict | None = None) -> RunConfig:
    """Validate a resolved profile dict into a :class:`RunConfig` (``where`` names it in errors)."""
    unknown = set(prof) - set(SECTIONS) - set(TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}{_hint(unknown, [*SECTIONS, *TOP_LEVEL])}")
    seed = _coerce(prof.get("seed", 0), int, f"{where}: seed")
    sections = {}
    for sec, cls in SECTIONS.items():
        values = prof.get(sec) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {sec!r} must be a mapping of settings, not {values!r}")
        sections[sec] = _build(cls, values, seed, f"{where}: {sec}")
    return RunConfig(
        profile=name,
        description=str(prof.get("description", "")),
        results_dir=_coerce(prof.get("results_dir", "results"), str, f"{where}: results_dir"),
        seed=seed,
        overrides=dict(overrides or {}),
        **sections,
    )


def _hint(unknown, known) -> str:
    close = [m for u in sorted(unknown) for m in difflib.get_close_matches(u, known, n=1)]
    return f"; did you mean {', '.join(map(repr, close))}?" if close else f"; known: {', '.join(known)}"


def _build(cls: type, values: dict, seed: int, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    settable = [n for n in names if n != "seed"]
    if "seed" in values:
        raise ConfigError(f"{where}.seed: set the run's seed at the top of the profile, not in a section")
    unknown = set(values) - set(settable)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}{_hint(unknown, settable)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    if "seed" in names:
        kwargs["seed"] = seed
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(value, hint, where: str):
    """``value`` checked against the type ``hint`` (ints accepted for floats, lists for tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where} must be {_name(hint)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list of {_name(args[0])}, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }.get(hint)
    if ok is None:
        raise ConfigError(f"{where}: unsupported type {hint!r} in the configuration")
    if not ok:
        raise ConfigError(f"{where} must be {_name(hint)}, got {value!r} ({type(value).__name__})")
    return float(value) if hint is float else dict(value) if hint is dict else value


def _name(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_name(a) for a in typing.get_args(hint))
    return {type(None): "null", dict: "a mapping"}.get(hint, getattr(hint, "__name__", str(hint)))
