"""avg_lib: the library behind the AVG replication notebooks (docs/paper.md is the paper in our words).

Subpackages along the method's path, bottom up (imports run one way; tests/test_architecture.py checks it;
docs/architecture.md has every module):

  paths, progress, cache, results   core helpers: locations, progress bars, cache-or-compute, result writers
  data         ``load_dataset(name)``: emoji, synthetic scenes, Karpathy splits, a folder of your own; images,
               frozen features (streamed to disk)
  retrieval    the voken trie and its batched constrained beam search, recall@K, exact and FAISS search
  models       two-tower joint space, RQ-VAE voken tokenizer and identifiers, token-to-voken generators,
               baselines, re-rankers (the causal-LM one included)
  evaluation   recall intervals and paired claims, tables, figures, README text, the timing studies
  runs         a profile's configuration, cached stages and ``pipeline.setup`` (what a notebook calls), table rows,
               notebook 09's LM roles, the notebook runner, free-text search
  tools        the command line (``python -m avg_lib COMMAND``, ``avg COMMAND``) and the commands that are not
               notebook steps
"""

__version__ = "0.1.0"
