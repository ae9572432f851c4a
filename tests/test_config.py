"""The run configuration: profiles validated into frozen dataclasses, with errors that name the file and key."""

import dataclasses
import json

import pytest
import yaml

from avg_lib.runs import config


@pytest.fixture()
def profiles(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "PROFILE_DIR", tmp_path)

    def write(name, text):
        (tmp_path / f"{name}.yaml").write_text(text)
        return tmp_path / f"{name}.yaml"

    return write


def test_every_shipped_profile_loads():
    for name in config.known_profiles():
        cfg = config.load_config(name)
        assert cfg.profile == name and cfg.description
        json.dumps(cfg.to_dict())  # what is saved beside every results table


def test_the_default_profile_spells_out_every_setting():
    """A reader sees every setting that changes a result in profiles/default.yaml, none hidden in a default."""
    raw = yaml.safe_load(config.profile_path("default").read_text())
    for section, cls in config.SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)} - {"seed"}
        assert set(raw[section]) == fields, (section, fields ^ set(raw[section]))


def test_smoke_gpu_and_efficiency_extend_the_default():
    default, smoke, gpu, eff = (config.load_config(n) for n in ("default", "smoke", "gpu", "efficiency"))
    assert eff.efficiency.gallery_sizes[-1] == 1_000_000 and eff.efficiency.device == "cpu"
    assert eff.generator == default.generator and eff.results_dir == "results/efficiency"
    assert smoke.data.dataset == "synthetic" and smoke.results_dir == "results/smoke"
    assert smoke.generator.layers == default.generator.layers  # inherited key by key
    assert (
        dataclasses.replace(
            gpu,
            profile="default",
            description=default.description,
            results_dir="results",
            efficiency=default.efficiency,
            benchmark=default.benchmark,
            generator=dataclasses.replace(gpu.generator, device=default.generator.device),
        )
        == default
    )
    assert gpu.efficiency.device == "cuda" and max(gpu.efficiency.gallery_sizes) == 10_000_000
    assert gpu.generator.device == "cuda"  # every generator trains on the GPU: the default's models, on CUDA


def test_values_are_typed_and_lists_become_tuples(profiles):
    profiles(
        "p", "seed: 4\ntwo_tower: {lr: 1, epochs: 3}\nmain_table: {seeds: [1, 2]}\ngenerator: {decoder_width: null}\n"
    )
    cfg = config.load_config("p")
    assert cfg.two_tower.lr == 1.0 and isinstance(cfg.two_tower.lr, float)
    assert cfg.main_table.seeds == (1, 2)
    assert cfg.generator.decoder_width is None
    assert cfg.seed == cfg.two_tower.seed == cfg.tokenizer.seed == cfg.generator.seed == 4
    hash(cfg.main_table)  # frozen


@pytest.mark.parametrize(
    "text, message",
    [
        ("generator: {layer: 2}\n", r"p\.yaml: generator: unknown setting\(s\) \['layer'\]; did you mean 'layers'\?"),
        ("genrator: {layers: 2}\n", r"unknown section\(s\) \['genrator'\]; did you mean 'generator'\?"),
        ("generator: {layers: two}\n", r"p\.yaml: generator\.layers must be int, got 'two' \(str\)"),
        ("generator: {finetune_encoder: 1}\n", r"generator\.finetune_encoder must be bool, got 1"),
        ("tokenizer: {lr: 1e-3}\n", r"tokenizer\.lr must be float, got '1e-3'"),  # YAML 1.1 reads 1e-3 as a string
        ("main_table: {seeds: [0, x]}\n", r"main_table\.seeds\[1\] must be int"),
        ("main_table: {seeds: 3}\n", r"main_table\.seeds must be a list of int"),
        ("generator: {seed: 1}\n", r"generator\.seed: set the run's seed at the top of the profile"),
        ("generator: {backend: gpt}\n", r"p\.yaml: generator: backend must be 'minilm', 't5' or 'decoder'"),
        ("generator: [1, 2]\n", r"section 'generator' must be a mapping"),
        (
            "backends: {t5_settings: {dropuot: 0.1}}\n",
            r"p\.yaml: backends: t5_settings: dropuot not generator settings",
        ),
        ("rerank: {k: 20}\n", r"p\.yaml: rerank: k = 20 must be one of ks \[10, 50, 100\]"),
        ("rerank: {rerankers: [bm25]}\n", r"rerank: unknown re-ranker\(s\) \['bm25'\]"),
        ("retrieval: {pseudo_recipe: copied}\n", r"retrieval: pseudo_recipe must be one of"),
        ("two_tower: {search: maybe}\n", r"two_tower: search must be 'auto', 'on' or 'off'"),
        ("benchmark: {batch_sizes: [16, 64]}\n", r"benchmark: batch_sizes must start with 1"),
        ("efficiency: {ann: [lsh]}\n", r"efficiency: unknown approximate index\(es\) \['lsh'\]"),
        ("efficiency: {target_recall: 1.5}\n", r"efficiency: target_recall must be in \(0, 1\]"),
        ("seed: 1.5\n", r"seed must be int"),
        ("[1, 2]\n", r"a profile is a mapping"),
        ("a: [\n", r"not valid YAML"),
    ],
)
def test_bad_profiles_name_the_file_and_the_setting(profiles, text, message):
    profiles("p", text)
    with pytest.raises(config.ConfigError, match=message):
        config.load_config("p")


def test_extends_merges_section_by_section_and_detects_cycles(profiles):
    profiles(
        "base",
        "description: base\nresults_dir: r\nseed: 1\ntwo_tower: {epochs: 5, lr: 0.1}\n"
        "data: {dataset: synthetic, kwargs: {n_images: 50}}\n",
    )
    profiles(
        "child",
        "description: child\nextends: base\nresults_dir: r2\ntwo_tower: {lr: 0.5}\ndata: {kwargs: {n_images: 60}}\n",
    )
    profiles("loop", "extends: loop2\n")
    profiles("loop2", "extends: loop\n")
    cfg = config.load_config("child")
    assert (cfg.description, cfg.results_dir, cfg.seed) == ("child", "r2", 1)
    assert (cfg.two_tower.epochs, cfg.two_tower.lr) == (5, 0.5)
    assert cfg.data == config.DataConfig("synthetic", {"n_images": 60})  # kwargs replaced as a whole
    with pytest.raises(config.ConfigError, match="cycle: loop -> loop2 -> loop"):
        config.load_config("loop")
    with pytest.raises(config.ConfigError, match="unknown profile 'nope'.*known profiles: base, child"):
        config.load_config("nope")


def test_overrides_merge_like_a_profile_that_extends_it(profiles):
    profiles("p", "generator: {epochs: 8, layers: 2}\n")
    cfg = config.load_config("p", {"generator": {"epochs": 1}})
    assert (cfg.generator.epochs, cfg.generator.layers) == (1, 2) and cfg.overrides == {"generator": {"epochs": 1}}
    with pytest.raises(config.ConfigError, match=r"p\.yaml \+ overrides: generator: unknown setting"):
        config.load_config("p", {"generator": {"epoch": 1}})


def test_with_seed_reseeds_every_trained_stage():
    cfg = config.load_config("smoke").with_seed(7)
    assert cfg.seed == cfg.two_tower.seed == cfg.tokenizer.seed == cfg.generator.seed == 7
    assert cfg.with_seed(0) == config.load_config("smoke")


def test_backend_comparison_trains_t5_at_its_own_settings_and_every_backend_generative_only():
    b = config.load_config("default").backends
    assert b.changes("minilm") == {"epochs": b.epochs, "backend": "minilm", "disc_epochs": 0}
    t5 = b.changes("t5")
    assert t5["backend"] == "t5" and t5["disc_epochs"] == 0
    assert {k: t5[k] for k in ("dropout", "lr", "temperature")} == {"dropout": 0.1, "lr": 0.001, "temperature": 0.5}
    assert t5["patience"] > 0  # until validation stops improving


def test_an_override_that_drops_keys_of_a_mapping_setting_warns_naming_them():
    """Overrides merge section by section, and a mapping-valued setting is replaced whole: the scale runs' override of
    data.kwargs once dropped the profile's captions_per_image unnoticed. Now it warns, naming what is lost."""
    with pytest.warns(UserWarning, match=r"data\.kwargs\.captions_per_image \(was 5\)"):
        cfg = config.load_config("scale", {"data": {"kwargs": {"n_images": 100}}})
    assert "captions_per_image" not in cfg.data.kwargs  # the merge itself is unchanged
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.load_config("smoke", {"data": {"kwargs": {"n_images": 50}}})  # nothing lost: no warning
        config.load_config("default", {"generator": {"epochs": 1}})
