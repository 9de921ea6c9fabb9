"""Which device the model runs on: MUSICGEN_DEVICE (auto, cuda, cpu), said once and plainly.

The image expects a GPU (cog.yaml sets MUSICGEN_DEVICE=cuda): a container that sees none fails
setup naming the likely causes, instead of serving minutes-long requests from its CPU.
"""

from __future__ import annotations

import logging

import torch

from ..environment import setting

log = logging.getLogger(__name__)
DEVICE_ENV = "MUSICGEN_DEVICE"
DEVICE_CHOICES = ("auto", "cuda", "cpu")


class NoGpu(RuntimeError):
    """CUDA was asked for and torch sees no CUDA device."""


def choose_device() -> str:
    """ "cuda" or "cpu", as MUSICGEN_DEVICE asks (default "auto": CUDA when torch sees a device)."""
    choice = setting(DEVICE_ENV, DEVICE_CHOICES)
    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise NoGpu(
            f"{DEVICE_ENV}=cuda, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device. "
            "Likely causes: the container was started without GPUs (`docker run --gpus all ...`, or the "
            "platform's GPU request), or the NVIDIA driver is older than this CUDA needs (CUDA 13.0: "
            "driver 580 or newer; `nvidia-smi` shows the driver's version). "
            f"To run on the CPU anyway (minutes per request), set {DEVICE_ENV}=cpu."
        )
    if choice == "cpu" or not available:
        if choice == "auto":
            log.warning(
                "no CUDA device: running on the CPU, where an 8 s request of a 1.5 B-parameter model takes "
                "minutes (set %s=cuda to require a GPU)",
                DEVICE_ENV,
            )
        return "cpu"
    return "cuda"
