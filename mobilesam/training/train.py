"""Student training, the paper's decoupled distillation: the student image encoder alone is
trained to reproduce the cached teacher embeddings (MSE).

AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast on GPU,
DistributedDataParallel under ``torchrun`` (NCCL on GPU, gloo on CPU; rank 0 logs and
saves), atomic checkpoints every ``save_every`` steps and exact resumption (model,
optimizer, scheduler, RNG and data order). The result, ``RUN/student.pt``, is an
official-format checkpoint: the student encoder plus the teacher's prompt encoder and mask
decoder under their original keys.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .._atomic import atomic_write
from ..build import build_image_encoder, build_sam
from ..checkpoint import read_state_dict
from ..modeling.sam import Sam
from ..modeling.tiny_vit import TinyViTConfig
from ..progress import progress_bar
from ..transforms import ResizeLongestSide
from .cache import CacheReader, to_model_input
from .data import ImageReader
from .distributed import setup_distributed
from .losses import mask_distillation_loss

#: Student encoders. ``vit_t`` is MobileSAM's TinyViT-5M; ``vit_t_small`` is a ~4× cheaper
#: TinyViT for quick experiments.
STUDENT_PRESETS: dict[str, TinyViTConfig] = {
    "vit_t": TinyViTConfig(),
    "vit_t_small": TinyViTConfig(
        embed_dims=(32, 64, 96, 192), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 6)
    ),
}
MODES = ("decoupled", "semi-coupled")
#: TrainConfig fields that may differ when a run is resumed: where and how it runs, how often
#: it saves, and the optional decoder stage that follows the encoder stage. Every other field
#: shapes the data order, the LR schedule (``epochs`` and ``max_steps`` set its length) or the
#: model, and must match the checkpoint's.
RESUMABLE_CHANGES = frozenset(
    {"out", "device", "num_workers", "save_every", "finetune_decoder_steps", "allow_stale_cache"}
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on (stored in its checkpoints)."""

    cache: str
    out: str
    teacher_checkpoint: str
    student: str = "vit_t"
    mode: str = "decoupled"
    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int | None = None  # default: 5% of all steps
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0
    save_every: int = 500
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    max_steps: int | None = None  # stop early (smoke tests)
    mask_points: int = 4  # semi-coupled: point prompts per image (plus their boxes)
    finetune_decoder_steps: int = 0  # optional second stage (see finetune_decoder)
    allow_stale_cache: bool = False  # train even if cached images changed since caching


class CacheDataset(torch.utils.data.Dataset):
    """``(student input (3, S, S), teacher embedding (C, h, w) float32, (h, w) of the resized
    image inside the padded input)`` per cache entry. Each DataLoader worker gets its own copy
    of ``cache`` (without its loaded shards) and opens its own tar files."""

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
        size = ResizeLongestSide.get_preprocess_shape(*image.shape[:2], self.img_size)
        return to_model_input(image, self.img_size), target.float(), torch.tensor(size)


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
    per_rank = len(order) // world
    return order[rank::world][:per_rank]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _check_resume_config(saved: dict[str, Any] | None, cfg: TrainConfig, last: Path) -> None:
    """Refuse to resume ``last`` with settings other than those it was trained with (bar
    :data:`RESUMABLE_CHANGES`)."""
    if saved is None:  # a checkpoint without its config: nothing to compare
        return
    now = asdict(cfg)
    differ = [k for k in now if k not in RESUMABLE_CHANGES and k in saved and saved[k] != now[k]]
    if differ:
        detail = "; ".join(f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now" for k in differ)
        raise ValueError(
            f"cannot resume {last} with different settings ({detail}). Resume with the run's "
            "own settings (its config.json), or start a new run in another directory"
        )


def _trim_metrics(path: Path, step: int) -> None:
    """Before resuming from ``step``: drop the rows the run will log again (steps after it, and
    the decoder stage, which restarts from scratch) and a line cut short by a crash."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row and row["step"] <= step:
            keep.append(line + "\n")
    atomic_write(path, lambda tmp: tmp.write_text("".join(keep)))


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, numbers and plain containers only, so that ``last.pt``
    loads with ``weights_only=True``."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {
            "version": version,
            "keys": torch.tensor(keys, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["keys"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(path: Path) -> dict[str, Any]:
    """``last.pt`` loaded with ``weights_only=True``: tensors, numbers and plain containers
    only, so a planted file cannot run code. Anything else is refused, naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals come in several types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(
            f"refusing to resume from {path}: it is not a plain training checkpoint (tensors, "
            f"numbers and containers only; loaded with weights_only=True): {reason}"
        ) from None


def export_student(
    encoder: nn.Module,
    teacher_checkpoint: str,
    path: Path,
    mask_decoder: nn.Module | None = None,
) -> None:
    """Official-format checkpoint: ``image_encoder.*`` from the student, ``prompt_encoder.*``
    and ``mask_decoder.*`` from the teacher (or the fine-tuned ``mask_decoder``), as a plain
    fp32 state dict."""
    teacher = read_state_dict(teacher_checkpoint)
    sd = {f"image_encoder.{k}": v.detach().float().cpu() for k, v in encoder.state_dict().items()}
    for k, v in teacher.items():
        if k.startswith(("prompt_encoder.", "mask_decoder.")):
            sd[k] = v
    if mask_decoder is not None:
        for k, v in mask_decoder.state_dict().items():
            sd[f"mask_decoder.{k}"] = v.detach().float().cpu()
    atomic_write(path, lambda tmp: torch.save(sd, tmp))


def finetune_decoder(
    student: nn.Module,
    teacher: Sam,
    cfg: TrainConfig,
    dataset: CacheDataset,
    device: torch.device,
    out: Path,
) -> tuple[nn.Module, list[float]]:
    """Second stage: the student encoder frozen, a copy of the teacher's mask decoder trained
    for ``cfg.finetune_decoder_steps`` steps with the mask loss against the teacher's own
    masks (random points and their boxes). Single process; not resumable mid-stage.
    Returns the decoder and its losses (also appended to ``metrics.jsonl``)."""
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
            nn.utils.clip_grad_norm_(decoder.parameters(), cfg.clip_grad)
            opt.step()
            losses.append(loss.detach().item())
            metrics.write(json.dumps({"finetune_step": i + 1, "loss": losses[-1]}) + "\n")
    return decoder, losses


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a distillation; returns the end-of-run summary.

    ``stop_after`` ends this invocation after that many steps in all (as an interruption
    would), leaving ``last.pt`` to resume from; the schedule still spans the whole run.

    A new run refuses an ``out`` that holds a ``last.pt``; ``resume`` refuses settings other
    than the checkpoint's (bar :data:`RESUMABLE_CHANGES`) and drops the ``metrics.jsonl`` rows
    logged after the checkpoint's step.
    """
    if cfg.student not in STUDENT_PRESETS:
        raise ValueError(f"student must be one of {list(STUDENT_PRESETS)}, got {cfg.student!r}")
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    if not Path(cfg.teacher_checkpoint).is_file():
        raise FileNotFoundError(f"teacher checkpoint {cfg.teacher_checkpoint} not found")
    rank, world, device = setup_distributed(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    state = None
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        state = load_resume_state(last)
        _check_resume_config(state.get("config"), cfg, last)
    elif last.is_file():
        raise FileExistsError(
            f"{last} exists: pass --resume (resume=True) to continue that run, or choose "
            "another --out directory for a new one"
        )
    torch.manual_seed(cfg.seed)

    enc_cfg = STUDENT_PRESETS[cfg.student]
    student = build_image_encoder(enc_cfg).to(device)
    cache = CacheReader(cfg.cache)
    stale = [] if cfg.allow_stale_cache else cache.stale_sources()
    if stale:
        raise ValueError(
            f"the cache {cfg.cache} is stale: {', '.join(stale)} changed since it was built "
            "(rebuild the cache, or allow_stale_cache=True / --allow-stale-cache)"
        )
    emb_shape = cache.manifest["embedding_shape"]
    if emb_shape[0] != enc_cfg.out_chans:
        raise ValueError(f"student outputs {enc_cfg.out_chans} channels, cache has {emb_shape}")
    model: nn.Module = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(cache) // world // cfg.batch_size  # epoch_order's length
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(cache)} cached entries over {world} rank(s) do not fill one batch of "
            f"{cfg.batch_size}"
        )
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, cfg.min_lr_ratio)
    )
    step = 0
    if state is not None:
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        _set_rng_state(state["rng"])
        del state
    if rank == 0 and not (resume and (out / "config.json").is_file()):
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    if cfg.num_workers > 0:  # checksums once, here, rather than in every worker every epoch
        cache.verify()
    dataset = CacheDataset(cache, enc_cfg.img_size)
    frozen = None  # the teacher's prompt encoder and mask decoder, frozen (mask losses)
    if cfg.mode == "semi-coupled" or cfg.finetune_decoder_steps > 0:
        frozen = build_sam(cfg.teacher_checkpoint).to(device)
        frozen.requires_grad_(False)
    autocast = device.type == "cuda"
    metrics = None
    if rank == 0:
        if resume:
            _trim_metrics(out / "metrics.jsonl", step)
        metrics = open(out / "metrics.jsonl", "a" if resume else "w")  # noqa: SIM115
    bar = progress_bar(total, "distill", unit="step", enabled=progress and rank == 0)
    bar.update(step)
    start, first_step, losses = time.perf_counter(), step, []

    def save() -> None:
        if rank != 0:
            return
        ckpt = {
            "student": student.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "rng": _rng_state(),
            "config": asdict(cfg),
        }
        atomic_write(last, lambda tmp: torch.save(ckpt, tmp))

    model.train()
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = epoch_order(cache, epoch, cfg.seed, rank, world)
        order = order[in_epoch * cfg.batch_size : steps_per_epoch * cfg.batch_size]
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=order, num_workers=cfg.num_workers
        )
        for x, target, sizes in loader:
            x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                pred = model(x)
            if cfg.mode == "decoupled":
                loss = F.mse_loss(pred.float(), target)
            else:  # prompts drawn from (seed, rank, step): reproducible, also on resume
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 7919 + step)
                loss = mask_distillation_loss(
                    pred.float(),
                    target,
                    sizes,
                    frozen.prompt_encoder,
                    frozen.mask_decoder,
                    cfg.mask_points,
                    gen,
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
            opt.step()
            sched.step()
            step += 1
            loss_value = loss.detach().item()
            losses.append(loss_value)
            if metrics is not None:
                metrics.write(
                    json.dumps(
                        {
                            "step": step,
                            "epoch": epoch,
                            "loss": loss_value,
                            "grad_norm": float(grad_norm),
                            "lr": sched.get_last_lr()[0],
                            "seconds": round(time.perf_counter() - start, 3),
                        }
                    )
                    + "\n"
                )
                metrics.flush()
            bar.update(1)
            if step % cfg.save_every == 0:
                save()
            if step >= total or (stop_after is not None and step >= stop_after):
                break
        if stop_after is not None and step >= stop_after:
            break
    bar.close()
    save()
    summary = {
        "steps": step,
        "steps_this_run": step - first_step,
        "seconds": round(time.perf_counter() - start, 2),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "student": cfg.student,
    }
    if world > 1:  # DDP must have kept every rank's weights identical: check, and record
        flat = torch.cat([p.detach().double().flatten() for p in student.parameters()])
        digest = torch.stack([flat.sum(), (flat * flat).sum()])
        gathered = [torch.zeros_like(digest) for _ in range(world)]
        dist.all_gather(gathered, digest)
        summary["ranks_in_sync"] = all(torch.equal(g, gathered[0]) for g in gathered)
    if rank == 0:
        assert metrics is not None
        metrics.close()
    if rank == 0 and step >= total:
        decoder = None
        if cfg.finetune_decoder_steps > 0:
            assert frozen is not None
            decoder, ft_losses = finetune_decoder(student, frozen, cfg, dataset, device, out)
            summary["finetune_decoder_losses"] = [ft_losses[0], ft_losses[-1]]
        export_student(student, cfg.teacher_checkpoint, out / "student.pt", decoder)
        summary["checkpoint"] = str(out / "student.pt")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if world > 1:
        dist.barrier()
    return summary
