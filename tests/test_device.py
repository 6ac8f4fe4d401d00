"""Device choice on CUDA cards, faked: the natural precision is bf16 only where the card has it natively."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nbtune.device import pick_device


def _fake_cuda(monkeypatch, name: str, major: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda _=0: SimpleNamespace(name=name, total_memory=16 * 2**30, major=major))
    # torch's own answer: native bf16 from compute capability 8.0; with emulation also older cards (a T4 says yes).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: major >= 8 or including_emulation)
    pick_device.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_cache():
    yield
    pick_device.cache_clear()


def test_t4_trains_in_fp16_not_emulated_bf16(monkeypatch):
    _fake_cuda(monkeypatch, "Tesla T4", major=7)
    info = pick_device()
    assert (info.type, info.precision, info.needs_loss_scaling) == ("cuda", "fp16", True)


def test_ampere_and_newer_train_in_bf16(monkeypatch):
    _fake_cuda(monkeypatch, "NVIDIA A100-SXM4-40GB", major=8)
    assert pick_device().precision == "bf16"
