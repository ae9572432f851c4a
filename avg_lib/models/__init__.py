"""Every model the method trains or scores with: the two-tower joint space (``two_tower``), the RQ-VAE voken
tokenizer (``tokenizer``) and its unique identifiers (``identifiers``), the token-to-voken generators
(``generator``), the baselines (``baselines``: one-tower cross-encoder, other identifier schemes), the
re-rankers of AVG's beams (``rerank``; the causal-LM one: ``lmrerank``, ``lmcheckpoint``), and the training
helpers they share (``kernels``, ``dropout``, ``selection``)."""
