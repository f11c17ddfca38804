"""The one training loop, shared by distillation (:mod:`.train`) and fine-tuning
(:mod:`.finetune`), on the model of sam2's ``training/trainer.py``.

The trainer owns everything that is not the task: the processes (``torchrun``, DDP: NCCL on
GPU, gloo on CPU; rank 0 logs and saves), AdamW with linear warm-up and cosine decay,
gradient clipping, the loop over epochs and steps, ``RUN/last.pt`` written atomically every
``save_every`` steps and exact resumption from it (model, optimizer, scheduler, RNG, data
order; :mod:`.resume`), the divergence checks (a non-finite loss or gradient never reaches the
weights, a non-finite tensor never reaches a checkpoint), the progress bar, ``config.json``,
``metrics.jsonl`` and ``summary.json``.

A client subclasses :class:`Trainer` and supplies the task:

- :meth:`Trainer.setup`: its data and the module to train (what ``last.pt`` keeps);
- :meth:`Trainer.compute_loss`: the loss of one batch, through :attr:`Trainer.model` (the
  module, wrapped in DDP when there are several processes);
- optionally :meth:`Trainer.epoch_order` (the data order), :meth:`Trainer.on_start` and
  :meth:`Trainer.extra_state` (work done once per run, kept across a resume), and
  :meth:`Trainer.finish` (the artefact of a complete run: ``student.pt``, ``model.pt``).

:meth:`Trainer.launch` runs it: checks, resume state, :meth:`Trainer.fit`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .._atomic import atomic_write
from ..checkpoint import non_finite_keys
from ..progress import progress_bar
from .distributed import setup_distributed
from .resume import (
    check_resume_config,
    load_resume_state,
    rng_state,
    set_rng_state,
    trim_metrics,
)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The settings every training run has (a client's config extends it; every field is a
    flag of its command and a key of its TOML table).

    ``batch_size`` is per process; ``warmup_steps`` defaults to 5% of all steps; the cosine
    decay ends at ``lr × min_lr_ratio``; ``max_steps`` cuts the run (and its schedule)
    short."""

    out: str
    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0
    save_every: int = 500
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    max_steps: int | None = None


#: RunConfig fields that may differ when a run is resumed: where and how it runs and how
#: often it saves. The others set the data order, the schedule or the model.
RUN_RESUMABLE = frozenset({"out", "device", "num_workers", "save_every"})


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite, or the weights did: the run
    stops (exit 1 on the command line); ``last.pt`` keeps the last finite state saved."""


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def check_run_config(cfg: RunConfig) -> None:
    """Refuse a non-finite or out-of-range learning rate, weight decay, clipping norm or
    final LR ratio (one ValueError naming it)."""
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


def schedule(cfg: RunConfig, n_examples: int, world: int) -> tuple[int, int, int]:
    """``(steps per epoch and rank, total steps, warm-up steps)`` for ``n_examples`` shared
    by ``world`` ranks in batches of ``cfg.batch_size`` per rank."""
    steps_per_epoch = n_examples // world // cfg.batch_size  # deal()'s length, in batches
    if steps_per_epoch == 0:
        raise ValueError(
            f"{n_examples} training examples over {world} rank(s) do not fill one batch of "
            f"{cfg.batch_size}"
        )
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, total // 20)
    return steps_per_epoch, total, warmup


def deal(order: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Rank ``rank``'s share of a global ``order``: every ``world``-th item, cut to
    ``len(order) // world``. Step ``s`` of every rank together covers the global batch
    ``order[s·B·world : (s+1)·B·world]``, so ``world`` ranks with batch ``B`` see the same
    examples per step as one process with batch ``B·world``."""
    per_rank = len(order) // world
    return list(order[rank::world][:per_rank])


def adamw(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``params``: PyTorch's fused implementation where this PyTorch has one for
    their device (the same algorithm, several times faster on a CPU than the per-tensor
    loop), else the default."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device here
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def all_ranks_finite(values: Iterable[float], world: int, device: torch.device) -> bool:
    """Whether ``values`` are finite on every rank: under DDP the verdict is shared (one
    all-reduce of a flag), so all ranks stop at the same step and none waits for the others
    in the next collective."""
    ok = all(math.isfinite(v) for v in values)
    if world == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() == 0.0


def ranks_in_sync(module: nn.Module, world: int) -> bool:
    """Whether DDP kept every rank's weights identical (sum and sum of squares compared)."""
    flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
    digest = torch.stack([flat.sum(), (flat * flat).sum()])
    gathered = [torch.zeros_like(digest) for _ in range(world)]
    dist.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def prepare_out(out: Path, resume: bool) -> Path:
    """Create the run folder ``out``; return its ``last.pt``, which must exist to resume and
    must not for a new run (so a run is never overwritten)."""
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"resume=True, but there is no checkpoint at {last}")
    if not resume and last.is_file():
        raise FileExistsError(
            f"{last} exists: resume=True continues that run; a new run needs another out folder"
        )
    return last


class Trainer(ABC):
    """One training run of a task a subclass supplies (see the module's docstring).

    Attributes set by ``__init__``: ``cfg``, ``rank``, ``world``, ``device``, ``out``,
    ``progress`` (rank 0 may show progress bars),
    ``module`` (what :meth:`setup` returned: the trained module, whose ``state_dict`` is
    checkpointed), ``model`` (``module``, in DDP when ``world > 1``), ``params`` (its
    parameters that require grad, which AdamW optimizes), ``opt``, ``sched``,
    ``steps_per_epoch`` (per rank) and ``total`` (the run's length in steps, the
    schedule's).
    """

    #: The progress bar's label.
    name: ClassVar[str] = "train"
    #: The key of :attr:`module`'s state in ``last.pt``.
    state_key: ClassVar[str] = "model"
    #: Config fields that may differ on resume.
    resumable: ClassVar[frozenset[str]] = RUN_RESUMABLE
    #: DDP's ``find_unused_parameters`` (a loss that leaves some trainable parameters out).
    find_unused_parameters: ClassVar[bool] = False
    #: DataLoader's ``collate_fn`` (None: PyTorch's default, stacking tensors).
    collate: ClassVar[Any] = None

    def __init__(
        self,
        cfg: RunConfig,
        rank: int,
        world: int,
        device: torch.device,
        progress: bool = False,
    ) -> None:
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.out = Path(cfg.out)
        self.progress = progress and rank == 0  # whether set-up work may show a bar
        self.module = self.setup()
        self.steps_per_epoch, self.total, warmup = schedule(cfg, self.num_examples(), world)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("nothing to train: every parameter of the model is frozen")
        self.model: nn.Module = self.module
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=ids, find_unused_parameters=self.find_unused_parameters
            )
        self.opt = adamw(self.params, cfg.lr, cfg.weight_decay)
        total, ratio = self.total, cfg.min_lr_ratio
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, total, warmup, ratio)
        )

    # ------------------------------------------------------------------ the client's part

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Refuse a config the task cannot run, before anything is built (ValueError or
        FileNotFoundError, one line). The run's own settings are checked already."""
        return None  # nothing, unless the task says otherwise

    @abstractmethod
    def setup(self) -> nn.Module:
        """Build the data and the module to train, on :attr:`device`, initialised from the
        seed alone (a resumed run then loads ``last.pt`` into it)."""

    @abstractmethod
    def num_examples(self) -> int:
        """How many examples an epoch has, over all ranks."""

    @abstractmethod
    def dataset(self) -> torch.utils.data.Dataset:
        """What the DataLoader reads: ``dataset[key]`` for the keys of :meth:`epoch_order`."""

    @abstractmethod
    def compute_loss(self, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch (a scalar with grad, computed through :attr:`model`) and
        figures to log beside it (plain floats); ``step`` counts from 0."""

    def epoch_order(self, epoch: int) -> list[Any]:
        """This rank's dataset keys for ``epoch``, in order: a permutation seeded by
        ``(seed, epoch)``, dealt to the ranks (:func:`deal`)."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        return deal(rng.permutation(self.num_examples()).tolist(), self.rank, self.world)

    def on_start(self) -> None:
        """Once per run, before its first step (not again on resume; what it computes and
        must outlive an interruption goes in :meth:`extra_state`)."""
        return None  # nothing, unless the task says otherwise

    def extra_state(self) -> dict[str, Any]:
        """State of the task kept in ``last.pt`` besides the module's (tensors, numbers,
        text and containers only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
        return None  # nothing, unless the task says otherwise

    def summary_fields(self) -> dict[str, Any]:
        """What the task adds to every summary (complete or not)."""
        return {}

    def finish(self, summary: dict[str, Any]) -> None:
        """Rank 0, at the end of a complete run: write the artefact and complete
        ``summary`` (``summary.json`` is written after)."""
        return None  # nothing, unless the task says otherwise

    # ------------------------------------------------------------------ the trainer's part

    @classmethod
    def launch(
        cls,
        cfg: RunConfig,
        resume: bool = False,
        progress: bool = True,
        stop_after: int | None = None,
    ) -> dict[str, Any]:
        """Run (or resume) a training of ``cfg``; returns the end-of-run summary.

        ``stop_after`` ends this invocation after that many steps in all (as an interruption
        would), leaving ``last.pt`` to resume from; the schedule still spans the whole run.

        A new run refuses an ``out`` that holds a ``last.pt``; ``resume`` refuses settings
        other than the checkpoint's (bar :attr:`resumable`) and drops the ``metrics.jsonl``
        rows logged after the checkpoint's step.

        Raises:
            TrainingDiverged: a non-finite loss or gradient norm (checked before the
                optimizer step, so it never reaches the weights), or non-finite weights or
                optimizer state when a checkpoint is due. Nothing more is written;
                ``last.pt`` keeps the last finite state saved, and the message says which
                step that is.
        """
        check_run_config(cfg)
        cls.check_config(cfg)
        rank, world, device = setup_distributed(cfg.device)
        last = prepare_out(Path(cfg.out), resume)
        saved = None
        if resume:
            saved = load_resume_state(last)
            check_resume_config(saved.get("config"), asdict(cfg), cls.resumable, last)
        trainer = cls(cfg, rank, world, device, progress)
        return trainer.fit(saved, progress, stop_after)

    def fit(
        self, saved: dict[str, Any] | None, progress: bool = True, stop_after: int | None = None
    ) -> dict[str, Any]:
        """The loop, from step 0 or from ``saved`` (``last.pt``'s content); see
        :meth:`launch`."""
        resume = saved is not None
        step = first_step = self.restore(saved) if saved is not None else 0
        del saved  # its tensors now live in the model and the optimizer
        if not resume:
            self.on_start()
        end = self.total if stop_after is None else min(self.total, stop_after)
        bar = progress_bar(self.total, self.name, unit="step", enabled=progress and self.rank == 0)
        bar.update(step)
        start, losses = time.perf_counter(), []
        saved_step = first_step if resume else None  # what last.pt holds; None: none yet
        self.model.train()
        try:
            with self._open_metrics(resume, step) as metrics:
                while step < end:
                    epoch, in_epoch = divmod(step, self.steps_per_epoch)
                    for batch in self._epoch_loader(epoch, in_epoch):
                        loss, logs = self.train_step(batch, step)
                        step += 1
                        losses.append(loss)
                        row = {"step": step, "epoch": epoch, "loss": loss, **logs}
                        self._log_metrics(metrics, row, start)
                        bar.update(1)
                        if step % self.cfg.save_every == 0:
                            saved_step = self.save_last(step)
                        if step >= end:
                            break
            if saved_step != step:
                saved_step = self.save_last(step)
        except TrainingDiverged as exc:
            raise TrainingDiverged(f"{exc}. {self._kept(saved_step)}") from None
        finally:
            bar.close()
        summary = {
            "steps": step,
            "steps_this_run": step - first_step,
            "seconds": round(time.perf_counter() - start, 2),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            **self.summary_fields(),
        }
        return self._finish(summary)

    def restore(self, state: dict[str, Any]) -> int:
        """Load ``last.pt``'s module, optimizer, scheduler, task and RNG states; returns its
        step."""
        self.module.load_state_dict(state[self.state_key])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.load_extra_state(state.get("extra", {}))
        set_rng_state(state["rng"])
        return int(state["step"])

    def train_step(self, batch: Any, step: int) -> tuple[float, dict[str, float]]:
        """One optimizer step on ``batch``; returns the loss and what to log (the gradient
        norm before clipping, the task's figures). A non-finite loss or gradient norm raises
        :class:`TrainingDiverged` before the optimizer step (under DDP on every rank alike),
        so the weights stay as they were."""
        loss, logs = self.compute_loss(batch, step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad)
        loss_value, norm_value = loss.detach().item(), float(grad_norm)
        if not all_ranks_finite((loss_value, norm_value), self.world, self.device):
            where = ""
            if self.world > 1:
                local_ok = math.isfinite(loss_value) and math.isfinite(norm_value)
                where = f" on rank {self.rank}" + (
                    " (another rank's were not finite)" if local_ok else ""
                )
            raise TrainingDiverged(
                f"training diverged at step {step + 1}: the loss is {loss_value:g} and the "
                f"gradient norm {norm_value:g}{where}"
            )
        self.opt.step()
        self.sched.step()
        return loss_value, {"grad_norm": norm_value, **logs}

    def save_last(self, step: int) -> int:
        """Rank 0: ``last.pt`` (module, optimizer, scheduler, step, RNG, config, task
        state), atomically; returns ``step``. Non-finite weights or optimizer state raise
        :class:`TrainingDiverged` instead, on every rank (DDP keeps them identical), and the
        previous ``last.pt`` stays."""
        bad = non_finite_keys(self.module.state_dict())
        for i, state in self.opt.state_dict()["state"].items():
            bad += [f"optimizer state {i}.{k}" for k in non_finite_keys(state)]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise TrainingDiverged(
                f"training diverged by step {step}: non-finite values in {', '.join(bad[:3])}{more}"
            )
        if self.rank != 0:
            return step
        ckpt = {
            self.state_key: self.module.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": step,
            "rng": rng_state(),
            "config": asdict(self.cfg),
            "extra": self.extra_state(),
        }
        atomic_write(self.out / "last.pt", lambda tmp: torch.save(ckpt, tmp))
        return step

    def _finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Under DDP, check that every rank holds the same weights (``ranks_in_sync``). Then,
        on rank 0 of a complete run: :meth:`finish` and ``summary.json`` (atomically).
        Returns ``summary``, completed."""
        if self.world > 1:
            summary["ranks_in_sync"] = ranks_in_sync(self.module, self.world)
        if self.rank == 0 and summary["steps"] >= self.total:
            self.finish(summary)
            text = json.dumps(summary, indent=2, allow_nan=False)
            atomic_write(self.out / "summary.json", lambda tmp: tmp.write_text(text))
        if self.world > 1:
            dist.barrier()
        return summary

    def _open_metrics(self, resume: bool, step: int) -> contextlib.AbstractContextManager:
        """Rank 0: write ``config.json`` (a new run's, atomically; a resumed run keeps its
        own), trim ``metrics.jsonl`` back to ``step`` on resume, and open it for appending.
        Other ranks get None."""
        if self.rank != 0:
            return contextlib.nullcontext(None)
        config, metrics = self.out / "config.json", self.out / "metrics.jsonl"
        if not (resume and config.is_file()):
            text = json.dumps(asdict(self.cfg), indent=2, allow_nan=False)  # checked: finite
            atomic_write(config, lambda tmp: tmp.write_text(text))
        if resume:
            trim_metrics(metrics, step)
        return open(metrics, "a" if resume else "w")  # noqa: SIM115 (the caller's with closes it)

    def _epoch_loader(self, epoch: int, in_epoch: int) -> torch.utils.data.DataLoader:
        """Batches of this rank's rest of ``epoch``, from its ``in_epoch``-th step on."""
        bs = self.cfg.batch_size
        order = self.epoch_order(epoch)[in_epoch * bs : self.steps_per_epoch * bs]
        return torch.utils.data.DataLoader(
            self.dataset(),
            batch_size=bs,
            sampler=order,
            num_workers=self.cfg.num_workers,
            collate_fn=self.collate,
        )

    def _log_metrics(self, metrics: IO[str] | None, row: dict[str, Any], start: float) -> None:
        """Append ``row`` with the learning rate and the seconds since ``start`` to
        ``metrics.jsonl`` (rank 0 only: other ranks pass None), flushed at once."""
        if metrics is None:
            return
        seconds = round(time.perf_counter() - start, 3)
        row = {**row, "lr": self.sched.get_last_lr()[0], "seconds": seconds}
        metrics.write(json.dumps(row, allow_nan=False) + "\n")
        metrics.flush()

    def _kept(self, saved: int | None) -> str:
        """What a diverged run leaves to resume from, and what to change: one sentence."""
        lr = f"lower the learning rate (lr {self.cfg.lr:g}) and start a new run in another folder"
        if saved is None:
            return f"No checkpoint was written (none was due yet): {lr}"
        return (
            f"No later checkpoint was written: {self.out / 'last.pt'} keeps step {saved}, the "
            f"last finite state; {lr}"
        )
