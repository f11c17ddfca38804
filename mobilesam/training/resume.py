"""Resuming a run from ``RUN/last.pt``: every RNG's state stored as plain tensors and numbers
(so the file loads with ``weights_only=True``), the refusal of a planted file or of changed
settings, and ``metrics.jsonl`` trimmed back to the checkpoint's step."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_write


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's, torch's and CUDA's RNG states as tensors, numbers and plain
    containers only, so that ``last.pt`` loads with ``weights_only=True``."""
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


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA's only where CUDA is available)."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["keys"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeRefused(RuntimeError):
    """``last.pt`` is not a plain training checkpoint (refused before anything is loaded)."""


def load_resume_state(path: Path) -> dict[str, Any]:
    """``last.pt`` loaded on the CPU with ``weights_only=True``: tensors, numbers and plain
    containers only, so a planted file cannot run code. Anything else is refused, naming the
    file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals come in several types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResumeRefused(
            f"refusing to resume from {path}: it is not a plain training checkpoint (tensors, "
            f"numbers and containers only; loaded with weights_only=True): {reason}"
        ) from None


def check_resume_config(
    saved: Mapping[str, Any] | None, now: Mapping[str, Any], may_change: Set[str], last: Path
) -> None:
    """Refuse to resume ``last`` with settings ``now`` other than the ``saved`` ones it was
    trained with, bar the keys in ``may_change``; a checkpoint without its config (``saved``
    None) has nothing to compare."""
    if saved is None:
        return
    differ = [k for k in now if k not in may_change and k in saved and saved[k] != now[k]]
    if differ:
        detail = "; ".join(f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now" for k in differ)
        raise ValueError(
            f"cannot resume {last} with different settings ({detail}). Resume with the run's "
            "own settings (its config.json), or start a new run in another directory"
        )


def trim_metrics(path: Path, step: int) -> None:
    """Before resuming from ``step``: drop the rows of ``path`` (``metrics.jsonl``) that the
    run will log again (steps after it, and the decoder stage's, which restarts from scratch)
    and a line cut short by a crash. The file is rewritten atomically."""
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
