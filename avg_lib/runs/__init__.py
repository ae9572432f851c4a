"""A run of a profile: its validated configuration (``config``, ``studies``), cached stages (``stages``), the
queries and galleries of each split (``splits``), the ``Run`` a notebook gets from ``pipeline.setup``, one table
row per call (``experiments``), notebook 09's LM roles (``lmroles``), the notebooks in order (``runner``) and
free-text search with the trained models (``search``)."""
