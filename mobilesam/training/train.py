"""Student training, the paper's decoupled distillation: the student image encoder alone is
trained to reproduce the cached teacher embeddings (MSE), or, in semi-coupled mode, the
teacher's masks through its frozen prompt encoder and mask decoder.

A client of the shared :class:`~.trainer.Trainer` (the loop, AdamW with warm-up and cosine
decay, DDP under ``torchrun``, atomic checkpoints and exact resume, the divergence checks,
``metrics.jsonl`` and ``summary.json``): :class:`DistillTrainer` supplies the cache, the
student and the loss. bf16 autocast on GPU. Of the teacher only the prompt encoder and mask
decoder are read (:mod:`.teacher`). The result, ``RUN/student.pt``, is an official-format
checkpoint: the student encoder plus the teacher's prompt encoder and mask decoder under
their original keys (with an optional second stage, :func:`finetune_decoder`, fine-tuning
that decoder on the frozen student).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..build import build_image_encoder
from ..modeling.tiny_vit import TinyViTConfig
from ..transforms import prepare_image
from .cache import CacheReader
from .data import ImageReader
from .losses import mask_distillation_loss
from .teacher import (
    TeacherHeads,
    build_teacher_heads,
    export_student,
    read_teacher_heads,
)
from .trainer import RUN_RESUMABLE, RunConfig, Trainer, TrainingDiverged, deal, lr_factor

__all__ = [
    "MODES",
    "RESUMABLE_CHANGES",
    "STUDENT_PRESETS",
    "CacheDataset",
    "DistillTrainer",
    "TrainConfig",
    "TrainingDiverged",
    "epoch_order",
    "finetune_decoder",
    "lr_factor",
    "train",
]

#: Student encoders. ``vit_t`` is MobileSAM's TinyViT-5M; ``vit_t_small`` is a ~4× cheaper
#: TinyViT for quick experiments.
STUDENT_PRESETS: dict[str, TinyViTConfig] = {
    "vit_t": TinyViTConfig(),
    "vit_t_small": TinyViTConfig(
        embed_dims=(32, 64, 96, 192), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 6)
    ),
}
MODES = ("decoupled", "semi-coupled")
#: TrainConfig fields that may differ when a run is resumed: the trainer's (where and how it
#: runs, how often it saves), the optional decoder stage that follows the encoder stage, and
#: leave to train on a changed cache. Every other field shapes the data order, the LR
#: schedule (``epochs`` and ``max_steps`` set its length) or the model.
RESUMABLE_CHANGES = RUN_RESUMABLE | {"finetune_decoder_steps", "allow_stale_cache"}


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """Everything a distillation run depends on (stored in its checkpoints and
    ``config.json``): the run's settings (:class:`~.trainer.RunConfig`) and these."""

    cache: str
    teacher_checkpoint: str
    student: str = "vit_t"
    mode: str = "decoupled"
    mask_points: int = 4  # semi-coupled: point prompts per image (plus their boxes)
    finetune_decoder_steps: int = 0  # optional second stage (see finetune_decoder)
    allow_stale_cache: bool = False  # train even if cached images changed since caching


class CacheDataset(torch.utils.data.Dataset):
    """``(student input (3, S, S) float32, teacher embedding (C, h, w) float32, (h, w) of the
    resized image inside the padded input (int64))`` per cache entry. Each DataLoader worker
    gets its own copy of ``cache`` (without its loaded shards) and opens its own tar files."""

    def __init__(self, cache: CacheReader, img_size: int) -> None:
        self.cache = cache
        self.img_size = img_size
        self._images: ImageReader | None = None

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._images is None:  # per worker process
            self._images = ImageReader()
        ref, view, target = self.cache.entry(i)
        image = view.apply(self._images.read(ref))
        x, size = prepare_image(image, self.img_size)
        return x[0], target.float(), torch.tensor(size)


def epoch_order(cache: CacheReader, epoch: int, seed: int, rank: int, world: int) -> list[int]:
    """This rank's entries for ``epoch``: shards in a seeded random order, entries shuffled
    within each shard (so a worker keeps one shard loaded), dealt round-robin to ranks and
    cut to equal length (``len(cache) // world`` entries)."""
    rng = np.random.default_rng([seed, epoch])
    by_shard: dict[int, list[int]] = {}
    for i in range(len(cache)):
        by_shard.setdefault(cache.shard_of(i), []).append(i)
    order: list[int] = []
    for s in rng.permutation(sorted(by_shard)):
        order += [by_shard[int(s)][j] for j in rng.permutation(len(by_shard[int(s)]))]
    return deal(order, rank, world)


def _open_cache(cfg: TrainConfig, student: TinyViTConfig) -> CacheReader:
    """The cache, refused if its sources changed (unless ``allow_stale_cache``) or if its
    embeddings do not have the student's channels; with DataLoader workers, every shard's
    checksum is verified here, once, rather than in every worker every epoch."""
    cache = CacheReader(cfg.cache)
    stale = [] if cfg.allow_stale_cache else cache.stale_sources()
    if stale:
        raise ValueError(
            f"the cache {cfg.cache} is stale: {', '.join(stale)} changed since it was built "
            "(rebuild the cache, or train with allow_stale_cache=True)"
        )
    emb_shape = cache.manifest["embedding_shape"]
    if emb_shape[0] != student.out_chans:
        raise ValueError(f"student outputs {student.out_chans} channels, cache has {emb_shape}")
    if cfg.num_workers > 0:
        cache.verify()
    return cache


class DistillTrainer(Trainer):
    """Distillation as a trainer client: the cache of teacher embeddings is the data, the
    student encoder the trained module; the loss is the embedding MSE (decoupled) or the
    mask loss through the teacher's frozen heads (semi-coupled). A complete run writes
    ``student.pt`` (after the optional decoder stage)."""

    name = "distill"
    state_key = "student"
    resumable = RESUMABLE_CHANGES
    cfg: TrainConfig

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Refuse an unknown student or mode, or a missing teacher checkpoint."""
        assert isinstance(cfg, TrainConfig)
        if cfg.student not in STUDENT_PRESETS:
            raise ValueError(f"student must be one of {list(STUDENT_PRESETS)}, got {cfg.student!r}")
        if cfg.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
        if not Path(cfg.teacher_checkpoint).is_file():
            raise FileNotFoundError(f"teacher checkpoint {cfg.teacher_checkpoint} not found")

    def setup(self) -> nn.Module:
        """The cache, the teacher's prompt encoder and mask decoder (read once; never its
        image encoder), and the student, initialised from ``cfg.seed``."""
        cfg = self.cfg
        enc_cfg = STUDENT_PRESETS[cfg.student]
        self.cache = _open_cache(cfg, enc_cfg)
        self._dataset = CacheDataset(self.cache, enc_cfg.img_size)
        _, grid_h, grid_w = self.cache.manifest["embedding_shape"]
        heads = read_teacher_heads(cfg.teacher_checkpoint)
        self.heads: TeacherHeads = build_teacher_heads(
            heads, (grid_h, grid_w), enc_cfg.img_size, self.device
        )
        torch.manual_seed(cfg.seed)  # after the heads: the student's init depends on the seed
        return build_image_encoder(enc_cfg).to(self.device)

    @property
    def student(self) -> nn.Module:
        """The student encoder (the trained module)."""
        return self.module

    def num_examples(self) -> int:
        return len(self.cache)

    def dataset(self) -> CacheDataset:
        return self._dataset

    def epoch_order(self, epoch: int) -> list[int]:
        return epoch_order(self.cache, epoch, self.cfg.seed, self.rank, self.world)

    def compute_loss(
        self, batch: tuple[torch.Tensor, ...], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch ``(x (B, 3, S, S), target (B, C, h, w), sizes (B, 2))``: MSE of the
        student's embeddings against the teacher's, or in semi-coupled mode the mask loss
        for prompts drawn from (seed, rank, step), reproducible on resume."""
        x, target, sizes = batch
        device, cfg = self.device, self.cfg
        x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = self.model(x)
        if cfg.mode == "decoupled":
            return F.mse_loss(pred.float(), target), {}
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.rank * 7919 + step)
        pe, md = self.heads.prompt_encoder, self.heads.mask_decoder
        loss = mask_distillation_loss(pred.float(), target, sizes, pe, md, cfg.mask_points, gen)
        return loss, {}

    def summary_fields(self) -> dict[str, Any]:
        return {"student": self.cfg.student}

    def finish(self, summary: dict[str, Any]) -> None:
        """The optional decoder stage, then ``student.pt``."""
        decoder = None
        if self.cfg.finetune_decoder_steps > 0:
            decoder, ft_losses = finetune_decoder(
                self.student, self.heads, self.cfg, self._dataset, self.device, self.out
            )
            summary["finetune_decoder_losses"] = [ft_losses[0], ft_losses[-1]]
        export_student(self.student, self.heads.state_dict, self.out / "student.pt", decoder)
        summary["checkpoint"] = str(self.out / "student.pt")


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a distillation; returns the end-of-run summary (see
    :meth:`Trainer.launch <mobilesam.training.trainer.Trainer.launch>` for ``resume``,
    ``stop_after`` and the errors)."""
    return DistillTrainer.launch(cfg, resume, progress, stop_after)


# The names tests/test_hardening_train.py reaches in for (a run prepared without its loop,
# and its checkpoint write).
_prepare_run = DistillTrainer


def _save_last(run: Trainer, step: int) -> int:
    return run.save_last(step)


def finetune_decoder(
    student: nn.Module,
    teacher: TeacherHeads,
    cfg: TrainConfig,
    dataset: CacheDataset,
    device: torch.device,
    out: Path,
) -> tuple[nn.Module, list[float]]:
    """Second stage: the student encoder frozen, a copy of the teacher's mask decoder trained
    for ``cfg.finetune_decoder_steps`` steps with the mask loss against the teacher's own
    masks (random points and their boxes). Single process; not resumable mid-stage.
    Returns the decoder and its losses (also appended to ``out/metrics.jsonl``).

    Raises:
        TrainingDiverged: a non-finite loss or gradient norm, before it reaches the decoder.
    """
    decoder = copy.deepcopy(teacher.mask_decoder).requires_grad_(True).train()
    student.eval().requires_grad_(False)
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr * 0.1, weight_decay=cfg.weight_decay)
    order = epoch_order(dataset.cache, 10_000, cfg.seed, 0, 1)
    losses: list[float] = []
    with open(out / "metrics.jsonl", "a") as metrics:
        for i in range(cfg.finetune_decoder_steps):
            idx = [order[(i * cfg.batch_size + j) % len(order)] for j in range(cfg.batch_size)]
            x, target, sizes = (
                torch.stack(t) for t in zip(*(dataset[k] for k in idx), strict=True)
            )
            with torch.no_grad():
                emb = student(x.to(device)).float()
            gen = torch.Generator().manual_seed(cfg.seed * 7 + 1_000_000 + i)
            loss = mask_distillation_loss(
                emb,
                target.to(device),
                sizes,
                teacher.prompt_encoder,
                teacher.mask_decoder,
                cfg.mask_points,
                gen,
                student_decoder=decoder,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(nn.utils.clip_grad_norm_(decoder.parameters(), cfg.clip_grad))
            value = loss.detach().item()
            if not (math.isfinite(value) and math.isfinite(grad_norm)):
                raise TrainingDiverged(
                    f"the decoder stage diverged at step {i + 1}: the loss is {value:g} and the "
                    f"gradient norm {grad_norm:g}; student.pt was not written (last.pt holds "
                    "the finished encoder stage: resuming with finetune_decoder_steps=0 exports "
                    f"it alone). Lower the learning rate (lr {cfg.lr:g}; the stage uses a tenth)"
                )
            opt.step()
            losses.append(value)
            row = {"finetune_step": i + 1, "loss": value}
            metrics.write(json.dumps(row, allow_nan=False) + "\n")
    return decoder, losses
