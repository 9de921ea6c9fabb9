"""MUSICGEN_DEVICE: auto, cuda or cpu. A server that expects a GPU and sees none fails setup
naming the likely causes; `auto` on a machine without one says once that it runs on the CPU."""

from __future__ import annotations

import logging

import pytest
import torch

from musicgen_cog.model.device import DEVICE_ENV, NoGpu, choose_device


def test_auto_without_a_gpu_runs_on_the_cpu_and_says_what_that_costs(monkeypatch, logs):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert choose_device() == "cpu"
    warnings = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert warnings == [
        "no CUDA device: running on the CPU, where an 8 s request of a 1.5 B-parameter model takes minutes "
        "(set MUSICGEN_DEVICE=cuda to require a GPU)"
    ]


def test_auto_with_a_gpu_takes_it_and_cpu_is_always_the_cpu(monkeypatch, logs):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(DEVICE_ENV, "auto")
    assert choose_device() == "cuda"
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert choose_device() == "cpu"
    assert not [r for r in logs.records if r.levelno == logging.WARNING]  # asked for: nothing to warn about


def test_cuda_asked_for_and_not_seen_names_the_likely_causes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(NoGpu) as refused:
        choose_device()
    message = str(refused.value)
    assert message.startswith(f"MUSICGEN_DEVICE=cuda, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees")
    assert "docker run --gpus all" in message and "driver 580 or newer" in message
    assert message.endswith("set MUSICGEN_DEVICE=cpu.")


def test_the_setting_is_checked(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match="MUSICGEN_DEVICE must be one of 'auto', 'cuda', 'cpu', got 'tpu'"):
        choose_device()


def test_the_image_expects_a_gpu():
    import yaml

    from tests.conftest import ROOT

    assert "MUSICGEN_DEVICE=cuda" in yaml.safe_load((ROOT / "cog.yaml").read_text())["environment"]
