"""Retrieval machinery with no learned parts: the voken trie and its batched constrained beam search (``trie``),
recall@K (``metrics``), and exact and FAISS approximate nearest-neighbour search (``ann``)."""
