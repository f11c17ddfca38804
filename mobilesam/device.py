"""Choosing the device a model runs on: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
``"mps"``, checked against what this machine has.

:func:`resolve_device` is the one place a device name becomes a :class:`torch.device`; a
device that is not there raises :class:`DeviceUnavailable`, one line naming what is.
"""

from __future__ import annotations

import torch

#: The device names :func:`resolve_device` takes (``cuda:N`` for any index N as well).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


class DeviceUnavailable(ValueError):
    """The device asked for is not on this machine (or the name is not a device)."""


def available_devices() -> list[str]:
    """The devices this process can use, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` for ``name``: ``"auto"`` (or None) takes CUDA device 0 where
    CUDA is available, else the CPU; ``"cuda"`` means the current CUDA device.

    Raises:
        DeviceUnavailable: an unknown name, or a device this machine does not have (the
            message lists the ones it has).
    """
    if name is None or name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        choices = ", ".join(DEVICE_CHOICES)
        raise DeviceUnavailable(f"unknown device {name!r} (choose from {choices})") from None
    have = available_devices()
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None and have[1:] else device.index
        device = torch.device("cuda", index or 0)
    if device.type == "cpu":
        return torch.device("cpu")
    if str(device) not in have:
        raise DeviceUnavailable(
            f"device {str(name)!r} is not available here (available: {', '.join(have)})"
        )
    return device
