"""avg_lib: the helper library behind the AVG replication notebooks.

Modules (one concern each):
  paths       repository-relative locations (data/, results/)
  data        the dataset abstraction and the emoji / synthetic / karpathy / folder loaders
  images      image decoding that handles every PIL mode the same way
  emoji       fetching the emoji npm packages (checksummed, cached under data/)
  synthetic   procedurally rendered captioned scenes
  features    frozen image/text encoders behind one interface, cached on disk
  two_tower   the CLIP-lite contrastive baseline (also the tokenizer's input space)
  metrics     Recall@K / rSum over ranked lists
  results     atomic CSV writing with provenance
  runner      the papermill driver behind run_all.sh
"""

__version__ = "0.1.0"
