"""Fine-tuning a SAM or MobileSAM checkpoint on your own instance masks, with SAM's training
recipe (:mod:`.prompt_sim`: noisy boxes or uniform points, correction clicks with the
previous logits fed back, the best of three for a single point; focal : Dice = 20 : 1 plus
the IoU prediction's MSE).

A client of the shared :class:`~.trainer.Trainer` (the loop, AdamW with warm-up and cosine
decay, DDP under ``torchrun``, atomic checkpoints and exact resume, ``metrics.jsonl``,
``summary.json``): :class:`FinetuneTrainer` supplies the data (:mod:`.instances`), the model
and the loss.

- **What trains:** the mask decoder; ``train`` adds the prompt encoder
  (``"prompt_encoder"``) and the image encoder, all of it (``"image_encoder"``) or its last
  N stages and neck (``"image_encoder:N"``; TinyViT stages, ViT blocks). The image encoder
  stays in eval mode (its BatchNorm statistics are kept) even where it trains.
- **Frozen image encoder:** the embeddings are computed once, in the distillation cache's
  format and by its code (:func:`~.cache.build_cache`: sharded, checksummed, shared by the
  ranks, recomputed only where missing), in ``RUN/embeddings/`` or ``cache``.
- **Split:** train/val by hashing each image key (:func:`~.data.select`); the val images are
  scored before and after (:mod:`mobilesam.evaluation.prompted`: box, centre point, point +
  correction click, and the box AP), in ``summary.json``.
- **Result:** ``RUN/model.pt``, an official-format checkpoint (the whole model, float32,
  the original keys) that ``sam_model_registry`` and every command load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..build import SamConfig, build_sam, build_sam_from_config
from ..hub import sha256_file
from ..modeling.sam import Sam
from ..modeling.tiny_vit import TinyViT
from ..transforms import ResizeLongestSide, prepare_image
from .cache import CacheConfig, CacheReader, build_cache
from .data import ImageReader, augment_views, select
from .instances import InstanceData, InstanceImage, read_coco, read_mask_folder
from .prompt_sim import InitialPrompts, initial_prompts, interactive_loss
from .teacher import write_checkpoint
from .trainer import RUN_RESUMABLE, RunConfig, Trainer

#: What ``train`` may add to the mask decoder.
TRAINABLE = ("prompt_encoder", "image_encoder", "image_encoder:N")
#: FinetuneConfig fields that may differ on resume: the trainer's, where the embeddings
#: live, and the evaluation.
RESUMABLE_CHANGES = RUN_RESUMABLE | {"cache", "evaluate", "max_eval_images"}


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(RunConfig):
    """Everything a fine-tuning run depends on (stored in its checkpoints and
    ``config.json``): the run's settings (:class:`~.trainer.RunConfig`, with fine-tuning's
    defaults) and these. The data is ``coco`` (an instances JSON) with ``images`` (its
    folder), or ``masks`` (a folder of images and masks; :mod:`.instances`)."""

    checkpoint: str
    coco: str | None = None
    images: str | None = None
    masks: str | None = None
    train: tuple[str, ...] = ()  # added to the mask decoder: see TRAINABLE
    img_size: int | None = None  # the model's input side; default the checkpoint's (1024)
    val_fraction: float = 0.1
    masks_per_image: int = 8  # instances per image and step
    corrections: int = 2  # correction rounds after the first prompt
    views: int = 0  # augmented views (flip, crop) per training image
    cache: str | None = None  # embedding cache folder; default RUN/embeddings
    evaluate: bool = True  # score the val split before and after
    max_eval_images: int | None = None
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.01
    save_every: int = 100


@dataclass(frozen=True)
class Trainable:
    """What trains besides the mask decoder: the prompt encoder, and the image encoder's
    last ``encoder_stages`` stages (0: none; -1: all of it)."""

    prompt_encoder: bool = False
    encoder_stages: int = 0

    @staticmethod
    def parse(parts: tuple[str, ...] | list[str]) -> Trainable:
        """From ``FinetuneConfig.train``; ValueError naming a part not in :data:`TRAINABLE`."""
        pe, stages = False, 0
        for part in parts:
            name, _, n = str(part).partition(":")
            if name == "prompt_encoder" and not n:
                pe = True
            elif name == "mask_decoder" and not n:
                continue  # always trained
            elif name == "image_encoder" and not n:
                stages = -1
            elif name == "image_encoder" and n.isdigit() and int(n) > 0:
                stages = -1 if stages == -1 else max(stages, int(n))
            else:
                raise ValueError(
                    f"train: {part!r} is not one of prompt_encoder, image_encoder, "
                    "image_encoder:N (the last N stages, N ≥ 1)"
                )
        return Trainable(pe, stages)


def load_model(checkpoint: str | Path, img_size: int | None = None) -> Sam:
    """The model of an official-format ``checkpoint`` (loaded strictly), for ``img_size``
    pixel inputs (default the checkpoint's architecture's, 1024). Only TinyViT encoders take
    another size (their weights do not depend on it; the output grid is ``img_size / 16``).

    Raises:
        ValueError: ``img_size`` for a ViT encoder, or not a positive multiple of 16.
    """
    sam = build_sam(checkpoint)
    if img_size is None or img_size == sam.img_size:
        return sam
    if not isinstance(sam.image_encoder, TinyViT):
        raise ValueError(
            f"img_size {img_size}: only MobileSAM's TinyViT encoder takes another input size "
            f"than {sam.img_size}"
        )
    if img_size < 64 or img_size % 16:
        raise ValueError(f"img_size must be a multiple of 16, at least 64, got {img_size}")
    resized = build_sam_from_config(
        SamConfig(encoder=replace(sam.image_encoder.cfg, img_size=img_size))
    )
    resized.load_state_dict(sam.state_dict(), strict=True)
    return resized


def set_trainable(sam: Sam, what: Trainable) -> None:
    """Freeze ``sam`` but its mask decoder and what ``what`` adds."""
    sam.requires_grad_(False)
    sam.mask_decoder.requires_grad_(True)
    if what.prompt_encoder:
        sam.prompt_encoder.requires_grad_(True)
    enc = sam.image_encoder
    if what.encoder_stages == -1:
        enc.requires_grad_(True)
    elif what.encoder_stages > 0:
        stages = enc.layers if isinstance(enc, TinyViT) else enc.blocks
        if what.encoder_stages > len(stages):
            raise ValueError(
                f"train: image_encoder:{what.encoder_stages}, but the encoder has "
                f"{len(stages)} stages"
            )
        for stage in list(stages)[-what.encoder_stages :]:
            stage.requires_grad_(True)
        enc.neck.requires_grad_(True)


class PromptedSam(nn.Module):
    """The trained part of the model, whose ``forward`` is a batch's loss (so that DDP sees
    every use of the weights): the prompt encoder, the mask decoder, and the image encoder
    when it trains (else the batch carries cached embeddings). Its ``state_dict`` keys are
    the model's own (a subset of :class:`~mobilesam.modeling.sam.Sam`'s)."""

    def __init__(self, sam: Sam, with_encoder: bool, corrections: int) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.image_encoder = sam.image_encoder if with_encoder else None
        self.corrections = corrections

    def train(self, mode: bool = True) -> PromptedSam:
        """As ``nn.Module.train``, but the image encoder stays in eval mode (BatchNorm)."""
        super().train(mode)
        if self.image_encoder is not None:
            self.image_encoder.eval()
        return self

    def forward(self, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean over the batch's images of :func:`~.prompt_sim.interactive_loss`, and its
        logged figures (means over the images with instances)."""
        device = self.mask_decoder.iou_token.weight.device
        if self.image_encoder is not None:
            emb = self.image_encoder(torch.stack([b["image"] for b in batch]).to(device))
        else:
            emb = torch.stack([b["embedding"] for b in batch]).to(device)
        losses, logs = [], []
        for j, item in enumerate(batch):
            if item["target"].shape[0] == 0:  # no instance survived the resize: no loss
                zero = sum(p.sum() for p in self.mask_decoder.parameters()) * 0.0
                losses.append(zero + emb[j].sum() * 0.0)
                continue
            gen = torch.Generator().manual_seed(item["seed"])
            loss, log = interactive_loss(
                emb[j : j + 1],
                self.prompt_encoder,
                self.mask_decoder,
                item["prompts"],
                item["target"].to(device),
                item["valid"],
                self.corrections,
                gen,
            )
            losses.append(loss)
            logs.append(log)
        mean = {k: float(np.mean([log[k] for log in logs])) for k in logs[0]} if logs else {}
        return torch.stack(losses).mean(), mean


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(K, H, W)`` bool → ``(K, h, w)`` bool, resized as the image is (PIL bilinear,
    antialiased), then thresholded at one half."""
    h, w = size
    out = np.zeros((len(masks), h, w), dtype=bool)
    for k, m in enumerate(masks):
        im = Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)
        out[k] = np.asarray(im) >= 128
    return out


def low_res_targets(masks: np.ndarray, img_size: int, cells: int) -> np.ndarray:
    """Input-frame masks ``(K, h, w)`` bool → the decoder's low-res frame, ``(K, cells,
    cells)`` float32 0/1: padded to ``img_size`` (bottom, right), each cell the majority of
    its ``img_size / cells`` pixels square."""
    k, h, w = masks.shape
    s = img_size // cells
    padded = np.zeros((k, img_size, img_size), dtype=np.float32)
    padded[:, :h, :w] = masks
    return (padded.reshape(k, cells, s, cells, s).mean((2, 4)) > 0.5).astype(np.float32)


class FinetuneDataset(torch.utils.data.Dataset):
    """Training examples: ``dataset[(i, epoch)]`` is entry ``i`` (an image or one of its
    views) for ``epoch``, with up to ``masks_per_image`` of its instances and their first
    prompts, all drawn from ``(seed, epoch, i)`` (so any rank, and a resumed run, draws the
    same).

    An item: ``embedding`` ``(C, g, g)`` float32 (from ``cache``) or ``image`` ``(3, S, S)``
    (preprocessed, when the encoder trains), ``target`` ``(k, L, L)`` low-res ground truth,
    ``prompts`` (:class:`~.prompt_sim.InitialPrompts`), ``valid`` (the low-res cells
    covering the image, ``(hl, wl)``) and ``seed`` (of the correction clicks).
    """

    def __init__(
        self,
        entries: list[tuple[InstanceImage, int]],
        img_size: int,
        cells: int,
        masks_per_image: int,
        views: int,
        seed: int,
        cache: CacheReader | None,
    ) -> None:
        self.entries = entries  # (image, cache entry index, or view index without a cache)
        self.img_size, self.cells = img_size, cells
        self.masks_per_image, self.views, self.seed = masks_per_image, views, seed
        self.cache = cache
        self._images: ImageReader | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        i, epoch = key
        image, where = self.entries[i]
        item: dict[str, Any] = {}
        if self.cache is not None:
            _, view, emb = self.cache.entry(where)
            item["embedding"] = emb.float()
        else:
            if self._images is None:  # per worker process
                self._images = ImageReader()
            rgb = self._images.read(image.ref)
            view = augment_views(image.ref, rgb.shape[:2], self.views, self.seed)[where]
            item["image"] = prepare_image(view.apply(rgb), self.img_size)[0][0]
        rng = np.random.default_rng([self.seed, epoch, i])
        pick = rng.permutation(len(image.instances))[: self.masks_per_image]
        masks = image.decode(np.sort(pick).tolist())
        masks = np.stack([view.apply(m) for m in masks])
        h, w = ResizeLongestSide.get_preprocess_shape(*masks.shape[1:], self.img_size)
        masks = _resize_masks(masks, (h, w))
        masks = masks[masks.any((1, 2))]  # an object may vanish in the resize
        if len(masks) == 0:
            empty = InitialPrompts(np.zeros(0, bool), np.zeros((0, 2)), np.zeros((0, 4)))
            item.update(target=torch.zeros(0, self.cells, self.cells), prompts=empty)
        else:
            item["prompts"] = initial_prompts(masks, self.img_size, rng)
            item["target"] = torch.from_numpy(low_res_targets(masks, self.img_size, self.cells))
        stride = self.img_size / self.cells
        item["valid"] = (math.ceil(h / stride), math.ceil(w / stride))
        item["seed"] = int(rng.integers(2**62))
        return item


def _as_list(batch: list[Any]) -> list[Any]:
    """The DataLoader's collate function: the items as they are (they differ in size)."""
    return batch


class FinetuneTrainer(Trainer):
    """Fine-tuning as a trainer client (see the module's docstring)."""

    name = "finetune"
    state_key = "model"
    resumable = RESUMABLE_CHANGES
    find_unused_parameters = True  # e.g. the mask encoder in a round without mask input
    collate = staticmethod(_as_list)
    cfg: FinetuneConfig

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Refuse data given both ways or neither, a missing checkpoint, a bad ``train``
        part, or counts out of range."""
        assert isinstance(cfg, FinetuneConfig)
        if (cfg.coco is None) == (cfg.masks is None):
            raise ValueError("give the data as coco (with images) or as masks, one of the two")
        if cfg.coco is not None and cfg.images is None:
            raise ValueError("coco needs images: the folder its file_names are relative to")
        if not Path(cfg.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {cfg.checkpoint} not found")
        Trainable.parse(cfg.train)
        if cfg.img_size is not None and (cfg.img_size < 64 or cfg.img_size % 16):
            raise ValueError(f"img_size must be a multiple of 16, at least 64, got {cfg.img_size}")
        if not 0 <= cfg.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
        for name in ("masks_per_image", "corrections", "views"):
            low = 1 if name == "masks_per_image" else 0
            if getattr(cfg, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(cfg, name)}")

    # ---------------------------------------------------------------- set-up

    def setup(self) -> nn.Module:
        """The model, what trains, the data and its split, and (encoder frozen) the
        embeddings of the train and val images."""
        cfg = self.cfg
        self.what = Trainable.parse(cfg.train)
        self.data = self._read_data()  # first: bad data fails before the model is built
        self.sam = load_model(cfg.checkpoint, cfg.img_size).to(self.device)
        self.base_sha256 = sha256_file(cfg.checkpoint)
        set_trainable(self.sam, self.what)
        by_key = {im.ref.key: im for im in self.data.images}
        refs = [im.ref for im in self.data.images]
        train = [by_key[r.key] for r in select(refs, 1.0, "train", cfg.val_fraction, cfg.seed)]
        val = [by_key[r.key] for r in select(refs, 1.0, "val", cfg.val_fraction, cfg.seed)]
        if not train:
            raise ValueError(f"no training images: {self.data.describe()}")
        self.unreadable = 0
        cells = self.sam.prompt_encoder.mask_input_size[0]
        with_encoder = self.what.encoder_stages != 0
        if with_encoder:
            self.train_cache = self.val_cache = None
            entries = [(im, v) for im in train for v in range(1 + cfg.views)]
            self.val_entries = [(im, 0) for im in val]
        else:
            self.train_cache, entries = self._cached(train, "train", cfg.views)
            self.val_cache, self.val_entries = self._cached(val, "val", 0)
        self.counts = {
            "train_images": len({im.ref.key for im, _ in entries}),
            "train_entries": len(entries),
            "val_images": len(self.val_entries),
            "instances": self.data.n_instances,
            "crowd_left_out": self.data.crowd,
            "skipped": dict(self.data.skipped)
            | ({"undecodable images": self.unreadable} if self.unreadable else {}),
        }
        self._dataset = FinetuneDataset(
            entries,
            self.sam.img_size,
            cells,
            cfg.masks_per_image,
            cfg.views,
            cfg.seed,
            self.train_cache,
        )
        self.eval_before: dict[str, Any] | None = None
        return PromptedSam(self.sam, with_encoder, cfg.corrections)

    def _read_data(self) -> InstanceData:
        cfg, warn = self.cfg, self.rank == 0
        if cfg.coco is not None:
            assert cfg.images is not None
            return read_coco(cfg.coco, cfg.images, warn=warn)
        assert cfg.masks is not None
        return read_mask_folder(cfg.masks, warn=warn)

    def _cached(
        self, images: list[InstanceImage], split: str, views: int
    ) -> tuple[CacheReader | None, list[tuple[InstanceImage, int]]]:
        """The embeddings of ``images`` (and ``views`` views each) in ``CACHE/split``, built
        where missing (the ranks share the shards), and the entries ``(image, cache
        index)`` of those that could be decoded."""
        if not images:
            return None, []
        folder = Path(self.cfg.cache or self.out / "embeddings") / split
        self._check_cache(folder)
        refs = sorted((im.ref for im in images), key=lambda r: r.key)
        build_cache(
            self.sam,
            refs,
            folder,
            CacheConfig(views=views, seed=self.cfg.seed),
            teacher_name=Path(self.cfg.checkpoint).name,
            teacher_sha256=self.base_sha256,
            rank=self.rank,
            world=self.world,
            progress=self.progress,
        )
        if self.world > 1:  # rank 0 writes the manifest after build_cache's own barrier
            torch.distributed.barrier()
        cache = CacheReader(folder)
        by_key = {im.ref.key: im for im in images}
        entries = []
        for e, (s, j) in enumerate(cache.index):
            entries.append((by_key[cache.manifest["shards"][s]["entries"][j]["key"]], e))
        self.unreadable += sum(len(s["unreadable"]) for s in cache.manifest["shards"])
        return cache, entries

    def _check_cache(self, folder: Path) -> None:
        """Refuse a cache folder made from another checkpoint or for another input size."""
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            return
        m = CacheReader(folder).manifest
        made = (m.get("teacher_checkpoint_sha256"), m.get("preprocessing", {}).get("img_size"))
        if made != (self.base_sha256, self.sam.img_size):
            raise ValueError(
                f"the embedding cache {folder} was made from another checkpoint or for another "
                f"input size ({made[1]} pixels): give another cache folder, or delete it"
            )

    # ---------------------------------------------------------------- the task

    def num_examples(self) -> int:
        return len(self._dataset)

    def dataset(self) -> FinetuneDataset:
        return self._dataset

    def epoch_order(self, epoch: int) -> list[tuple[int, int]]:
        """The trainer's seeded permutation, each index paired with the epoch (the items
        draw their instances and prompts from both)."""
        return [(i, epoch) for i in super().epoch_order(epoch)]

    def compute_loss(
        self, batch: list[dict[str, Any]], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        device = self.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return self.model(batch)

    def on_start(self) -> None:
        """Score the val split before any step (rank 0)."""
        if self.rank == 0 and self.cfg.evaluate:
            self.eval_before = self.evaluate()

    def extra_state(self) -> dict[str, Any]:
        return {"base_sha256": self.base_sha256, "eval_before": self.eval_before}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The evaluation before training, and a check that the starting checkpoint (the
        source of what ``last.pt`` does not hold) is the one the run started from."""
        if state.get("base_sha256") not in (None, self.base_sha256):
            raise ValueError(
                f"cannot resume: {self.cfg.checkpoint} changed since the run started (its "
                "sha256 differs), and last.pt holds only the trained parts"
            )
        self.eval_before = state.get("eval_before")

    def summary_fields(self) -> dict[str, Any]:
        return {"data": self.counts, "train": ["mask_decoder", *self.cfg.train]}

    def finish(self, summary: dict[str, Any]) -> None:
        """Score the val split again, then write ``model.pt``."""
        if self.cfg.evaluate:
            summary["eval"] = {"before": self.eval_before, "after": self.evaluate()}
        write_checkpoint(self.sam.state_dict(), self.out / "model.pt")
        summary["checkpoint"] = str(self.out / "model.pt")

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        """:mod:`mobilesam.evaluation.prompted`'s figures for the model as it is now, on the
        val images (the first ``max_eval_images``); None without val images."""
        from ..evaluation.prompted import PromptedResult, score_instances
        from ..predictor import SamPredictor

        entries = self.val_entries[: self.cfg.max_eval_images]
        if not entries:
            return None
        was_training = self.sam.training
        self.sam.eval()
        predictor = SamPredictor(self.sam)
        result, reader = PromptedResult(), ImageReader()
        try:
            for n, (image, where) in enumerate(entries, 1):
                if self.val_cache is not None:
                    emb = self.val_cache.entry(where)[2].float()[None]
                    predictor.set_embedding(emb, image.size)
                else:
                    predictor.set_image(reader.read(image.ref))
                result.merge(score_instances(predictor, image.decode(), image.categories, n))
        finally:
            reader.close()
            self.sam.train(was_training)
            self.module.train(self.module.training)  # keeps the encoder's eval mode
        return result.summary()


def finetune(
    cfg: FinetuneConfig,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a fine-tuning; returns the end-of-run summary (see
    :meth:`Trainer.launch <mobilesam.training.trainer.Trainer.launch>` for ``resume``,
    ``stop_after`` and the errors)."""
    return FinetuneTrainer.launch(cfg, resume, progress, stop_after)


__all__ = [
    "RESUMABLE_CHANGES",
    "TRAINABLE",
    "FinetuneConfig",
    "FinetuneDataset",
    "FinetuneTrainer",
    "PromptedSam",
    "Trainable",
    "finetune",
    "load_model",
]
