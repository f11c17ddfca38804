"""Student training, the paper's decoupled distillation: the student image encoder alone is
trained to reproduce the cached teacher embeddings (MSE), or, in semi-coupled mode, the
teacher's masks through its frozen prompt encoder and mask decoder.

AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast on GPU,
DistributedDataParallel under ``torchrun`` (NCCL on GPU, gloo on CPU; rank 0 logs and
saves), atomic checkpoints every ``save_every`` steps and exact resumption (model,
optimizer, scheduler, RNG and data order; see :mod:`.resume`). A non-finite loss or gradient
stops the run (:class:`TrainingDiverged`) before it reaches the weights, and no checkpoint
holding a non-finite value is ever written. Of the teacher only the prompt encoder and mask
decoder are read (:mod:`.teacher`). The result, ``RUN/student.pt``, is an official-format
checkpoint: the student encoder plus the teacher's prompt encoder and mask decoder under
their original keys.

``train`` reads top to bottom: checks and resume state, :func:`_prepare_run`, the loop of
:func:`_train_step`, then :func:`_finish`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .._atomic import atomic_write
from ..build import build_image_encoder
from ..checkpoint import non_finite_keys
from ..modeling.tiny_vit import TinyViTConfig
from ..progress import progress_bar
from ..transforms import prepare_image
from .cache import CacheReader
from .data import ImageReader
from .distributed import setup_distributed
from .losses import mask_distillation_loss
from .resume import (
    check_resume_config,
    load_resume_state,
    rng_state,
    set_rng_state,
    trim_metrics,
)
from .teacher import (
    TeacherHeads,
    build_teacher_heads,
    export_student,
    read_teacher_heads,
)

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
    """Everything a run depends on (stored in its checkpoints and ``config.json``)."""

    cache: str
    out: str
    teacher_checkpoint: str
    student: str = "vit_t"
    mode: str = "decoupled"
    epochs: int = 8
    batch_size: int = 8  # per process
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


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite, or the weights did: the run
    stops (exit 1 on the command line); ``last.pt`` keeps the last finite state saved."""


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
    per_rank = len(order) // world
    return order[rank::world][:per_rank]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class _Run:
    """The fixed parts of one invocation, built by :func:`_prepare_run`; the step count is
    the loop's. ``model`` is ``student``, wrapped in DDP when ``world > 1``; ``total`` is the
    run's length in steps (the schedule's), ``steps_per_epoch`` per rank."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    out: Path
    dataset: CacheDataset
    heads: TeacherHeads
    student: nn.Module
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    total: int


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

    Raises:
        TrainingDiverged: a non-finite loss or gradient norm (checked before the optimizer
            step, so it never reaches the weights), or non-finite weights or optimizer state
            when a checkpoint is due. Nothing more is written; ``last.pt`` keeps the last
            finite state saved, and the message says which step that is.
    """
    _check_config(cfg)
    rank, world, device = setup_distributed(cfg.device)
    saved = _resume_state(cfg, resume)  # None for a new run
    run = _prepare_run(cfg, rank, world, device)
    step = first_step = _restore(run, saved) if saved is not None else 0
    del saved  # its tensors now live in the model and the optimizer
    end = run.total if stop_after is None else min(run.total, stop_after)
    bar = progress_bar(run.total, "distill", unit="step", enabled=progress and rank == 0)
    bar.update(step)
    start, losses = time.perf_counter(), []
    saved_step = first_step if resume else None  # what last.pt holds; None: no last.pt yet
    run.model.train()
    try:
        with _open_metrics(run, resume, step) as metrics:
            while step < end:
                epoch, in_epoch = divmod(step, run.steps_per_epoch)
                for x, target, sizes in _epoch_loader(run, epoch, in_epoch):
                    loss, grad_norm = _train_step(run, x, target, sizes, step)
                    step += 1
                    losses.append(loss)
                    row = {"step": step, "epoch": epoch, "loss": loss, "grad_norm": grad_norm}
                    _log_metrics(metrics, run, row, start)
                    bar.update(1)
                    if step % cfg.save_every == 0:
                        saved_step = _save_last(run, step)
                    if step >= end:
                        break
        if saved_step != step:
            saved_step = _save_last(run, step)
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc}. {_kept(run, saved_step)}") from None
    finally:
        bar.close()
    summary = {
        "steps": step,
        "steps_this_run": step - first_step,
        "seconds": round(time.perf_counter() - start, 2),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "student": cfg.student,
    }
    return _finish(run, summary)


def _check_config(cfg: TrainConfig) -> None:
    """Refuse an unknown student or mode, a non-finite or out-of-range learning rate, weight
    decay, clipping norm or final LR ratio, or a missing teacher checkpoint."""
    for name, value, low in (
        ("lr", cfg.lr, 0.0),
        ("weight_decay", cfg.weight_decay, 0.0),
        ("clip_grad", cfg.clip_grad, 0.0),
        ("min_lr_ratio", cfg.min_lr_ratio, 0.0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not math.isfinite(value) or value < low or (name in ("lr", "clip_grad") and value == 0):
            kind = "a positive" if name in ("lr", "clip_grad") else "a non-negative"
            raise ValueError(f"{name} must be a finite number ({kind} one), got {value!r}")
    if cfg.student not in STUDENT_PRESETS:
        raise ValueError(f"student must be one of {list(STUDENT_PRESETS)}, got {cfg.student!r}")
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    if not Path(cfg.teacher_checkpoint).is_file():
        raise FileNotFoundError(f"teacher checkpoint {cfg.teacher_checkpoint} not found")


def _resume_state(cfg: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """Create ``cfg.out``; with ``resume``, its ``last.pt`` (checked against ``cfg``), else
    None after making sure no run is there to be overwritten."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    if not resume:
        if last.is_file():
            raise FileExistsError(
                f"{last} exists: resume=True continues that run; a new run needs another out folder"
            )
        return None
    if not last.is_file():
        raise FileNotFoundError(f"resume=True, but there is no checkpoint at {last}")
    state = load_resume_state(last)
    check_resume_config(state.get("config"), asdict(cfg), RESUMABLE_CHANGES, last)
    return state


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


def _schedule(cfg: TrainConfig, n_entries: int, world: int) -> tuple[int, int, int]:
    """``(steps per epoch and rank, total steps, warm-up steps)`` for ``n_entries`` cached
    entries shared by ``world`` ranks."""
    steps_per_epoch = n_entries // world // cfg.batch_size  # epoch_order's length
    if steps_per_epoch == 0:
        raise ValueError(
            f"{n_entries} cached entries over {world} rank(s) do not fill one batch of "
            f"{cfg.batch_size}"
        )
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, total // 20)
    return steps_per_epoch, total, warmup


def _prepare_run(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> _Run:
    """The cache, the teacher's prompt encoder and mask decoder (read once; never its image
    encoder), the student (initialised from ``cfg.seed``), its optimizer and LR schedule, as
    a new run starts them."""
    enc_cfg = STUDENT_PRESETS[cfg.student]
    cache = _open_cache(cfg, enc_cfg)
    steps_per_epoch, total, warmup = _schedule(cfg, len(cache), world)
    _, grid_h, grid_w = cache.manifest["embedding_shape"]
    heads = read_teacher_heads(cfg.teacher_checkpoint)
    heads = build_teacher_heads(heads, (grid_h, grid_w), enc_cfg.img_size, device)
    torch.manual_seed(cfg.seed)  # after the heads: the student's init depends on the seed only
    student = build_image_encoder(enc_cfg).to(device)
    model = student
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(student, device_ids=ids)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, cfg.min_lr_ratio)
    )
    return _Run(
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        out=Path(cfg.out),
        dataset=CacheDataset(cache, enc_cfg.img_size),
        heads=heads,
        student=student,
        model=model,
        opt=opt,
        sched=sched,
        steps_per_epoch=steps_per_epoch,
        total=total,
    )


def _restore(run: _Run, state: dict[str, Any]) -> int:
    """Load ``last.pt``'s student, optimizer, scheduler and RNG states; returns its step."""
    run.student.load_state_dict(state["student"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


def _open_metrics(run: _Run, resume: bool, step: int) -> contextlib.AbstractContextManager:
    """Rank 0: write ``config.json`` (a new run's, atomically; a resumed run keeps its own),
    trim ``metrics.jsonl`` back to ``step`` on resume, and open it for appending. Other
    ranks get None."""
    if run.rank != 0:
        return contextlib.nullcontext(None)
    config, metrics = run.out / "config.json", run.out / "metrics.jsonl"
    if not (resume and config.is_file()):
        text = json.dumps(asdict(run.cfg), indent=2, allow_nan=False)  # _check_config: finite
        atomic_write(config, lambda tmp: tmp.write_text(text))
    if resume:
        trim_metrics(metrics, step)
    return open(metrics, "a" if resume else "w")  # noqa: SIM115 (the caller's with closes it)


def _epoch_loader(run: _Run, epoch: int, in_epoch: int) -> torch.utils.data.DataLoader:
    """Batches of this rank's rest of ``epoch``, from its ``in_epoch``-th step on."""
    bs = run.cfg.batch_size
    order = epoch_order(run.dataset.cache, epoch, run.cfg.seed, run.rank, run.world)
    order = order[in_epoch * bs : run.steps_per_epoch * bs]
    return torch.utils.data.DataLoader(
        run.dataset, batch_size=bs, sampler=order, num_workers=run.cfg.num_workers
    )


def _train_step(
    run: _Run, x: torch.Tensor, target: torch.Tensor, sizes: torch.Tensor, step: int
) -> tuple[float, float]:
    """One optimizer step on a batch (``x`` (B, 3, S, S), ``target`` (B, C, h, w), ``sizes``
    (B, 2)); returns the loss and the gradient norm before clipping. A non-finite loss or
    gradient norm raises :class:`TrainingDiverged` before the optimizer step (under DDP on
    every rank alike), so the weights stay as they were."""
    cfg, device = run.cfg, run.device
    x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        pred = run.model(x)
    if cfg.mode == "decoupled":
        loss = F.mse_loss(pred.float(), target)
    else:  # prompts drawn from (seed, rank, step): reproducible, also on resume
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + run.rank * 7919 + step)
        pe, md = run.heads.prompt_encoder, run.heads.mask_decoder
        loss = mask_distillation_loss(pred.float(), target, sizes, pe, md, cfg.mask_points, gen)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(run.student.parameters(), cfg.clip_grad)
    loss_value, norm_value = loss.detach().item(), float(grad_norm)
    if not _all_ranks_finite(run, loss_value, norm_value):
        where = ""
        if run.world > 1:
            local_ok = math.isfinite(loss_value) and math.isfinite(norm_value)
            where = f" on rank {run.rank}" + (
                " (another rank's were not finite)" if local_ok else ""
            )
        raise TrainingDiverged(
            f"training diverged at step {step + 1}: the loss is {loss_value:g} and the gradient "
            f"norm {norm_value:g}{where}"
        )
    run.opt.step()
    run.sched.step()
    return loss_value, norm_value


def _all_ranks_finite(run: _Run, loss: float, grad_norm: float) -> bool:
    """Whether ``loss`` and ``grad_norm`` are finite on every rank: under DDP the verdict is
    shared (one all-reduce of a flag), so all ranks stop at the same step and none waits for
    the others in the next collective."""
    ok = math.isfinite(loss) and math.isfinite(grad_norm)
    if run.world == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=run.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() == 0.0


def _kept(run: _Run, saved: int | None) -> str:
    """What a diverged run leaves to resume from, and what to change: one sentence."""
    lr = f"lower the learning rate (lr {run.cfg.lr:g}) and start a new run in another folder"
    if saved is None:
        return f"No checkpoint was written (none was due yet): {lr}"
    return (
        f"No later checkpoint was written: {run.out / 'last.pt'} keeps step {saved}, the last "
        f"finite state; {lr}"
    )


def _log_metrics(metrics: IO[str] | None, run: _Run, row: dict[str, Any], start: float) -> None:
    """Append ``row`` with the learning rate and the seconds since ``start`` to
    ``metrics.jsonl`` (rank 0 only: other ranks pass None), flushed at once."""
    if metrics is None:
        return
    seconds = round(time.perf_counter() - start, 3)
    row = {**row, "lr": run.sched.get_last_lr()[0], "seconds": seconds}
    metrics.write(json.dumps(row, allow_nan=False) + "\n")
    metrics.flush()


def _save_last(run: _Run, step: int) -> int:
    """Rank 0: ``last.pt`` (student, optimizer, scheduler, step, RNG, config), atomically;
    returns ``step``. Non-finite weights or optimizer state raise :class:`TrainingDiverged`
    instead, on every rank (DDP keeps them identical), and the previous ``last.pt`` stays."""
    bad = non_finite_keys(run.student.state_dict())
    for i, state in run.opt.state_dict()["state"].items():
        bad += [f"optimizer state {i}.{k}" for k in non_finite_keys(state)]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TrainingDiverged(
            f"training diverged by step {step}: non-finite values in {', '.join(bad[:3])}{more}"
        )
    if run.rank != 0:
        return step
    ckpt = {
        "student": run.student.state_dict(),
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "step": step,
        "rng": rng_state(),
        "config": asdict(run.cfg),
    }
    atomic_write(run.out / "last.pt", lambda tmp: torch.save(ckpt, tmp))
    return step


def _finish(run: _Run, summary: dict[str, Any]) -> dict[str, Any]:
    """End of the encoder stage. Under DDP, check that every rank holds the same weights
    (``ranks_in_sync``). Then, on rank 0 of a complete run: the optional decoder stage,
    ``student.pt`` and ``summary.json`` (atomically). Returns ``summary``, completed."""
    if run.world > 1:
        summary["ranks_in_sync"] = _ranks_in_sync(run.student, run.world)
    if run.rank == 0 and summary["steps"] >= run.total:
        decoder = None
        if run.cfg.finetune_decoder_steps > 0:
            decoder, ft_losses = finetune_decoder(
                run.student, run.heads, run.cfg, run.dataset, run.device, run.out
            )
            summary["finetune_decoder_losses"] = [ft_losses[0], ft_losses[-1]]
        export_student(run.student, run.heads.state_dict, run.out / "student.pt", decoder)
        summary["checkpoint"] = str(run.out / "student.pt")
        text = json.dumps(summary, indent=2, allow_nan=False)
        atomic_write(run.out / "summary.json", lambda tmp: tmp.write_text(text))
    if run.world > 1:
        dist.barrier()
    return summary


def _ranks_in_sync(student: nn.Module, world: int) -> bool:
    """Whether DDP kept every rank's weights identical (sum and sum of squares compared)."""
    flat = torch.cat([p.detach().double().flatten() for p in student.parameters()])
    digest = torch.stack([flat.sum(), (flat * flat).sum()])
    gathered = [torch.zeros_like(digest) for _ in range(world)]
    dist.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)


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
