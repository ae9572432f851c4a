"""avg_lib: the library behind the AVG replication notebooks (docs/paper.md is the paper in our words).

Modules, one concern each (imports run one way; tests/test_architecture.py checks it):

  config       the run configuration: a profile validated into frozen dataclasses (studies: the
               notebooks' study sections)
  pipeline     ``setup(profile)``: one call gives a notebook its configuration and cached stages
  stages       joint space, voken tokenizer, generator: each cache-or-compute on disk
  splits       queries, galleries, training pairs and pseudo queries of a split
  cache        the one cache-or-compute helper (keyed directories, atomic publish, stage.json)
  data         ``load_dataset(name)``; dataset (the abstraction, karpathy and folder loaders),
               emoji, synthetic, images (decoding every PIL mode one way)
  features     frozen image/text encoders behind one interface, cached on disk (streamed: streaming)
  two_tower    the CLIP-lite contrastive baseline (also the tokenizer's input space)
  tokenizer    the RQ-VAE voken tokenizer; identifiers: collisions and their resolution
  generator/   token-to-voken generators (config, base, minilm, t5, decoder, build, training)
  trie         batched trie-constrained beam search
  baselines    one-tower cross-encoder and the other identifier schemes
  experiments  one results-table row per call (train-or-load, then score the test split)
  benchmark    decoding (against transformers' prefix_allowed_tokens_fn) and dropout timings
  efficiency   the gallery-size study (latency, throughput, build time, bytes per image, crossovers);
               ann: exact search and FAISS HNSW / IVF-PQ; speed: both studies without trained models
  cli          the one command line (``python -m avg_lib COMMAND``, ``avg COMMAND``); search: ``avg search``
  stats        recall intervals (bootstrap over images), paired differences, verdicts
  metrics, tables, viz, report, results, runner, paths, progress, selection, dropout
"""

__version__ = "0.1.0"
