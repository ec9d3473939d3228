"""Shared fixtures: no test reaches the Hub, and helpers to prove that a failed call changed nothing."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Keep every test off the network, as on a machine without internet.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import, so the constant it caches is patched as well.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _snapshot(model: torch.nn.Module) -> dict:
    config = getattr(model, "config", None)
    return {
        "state": {name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "modules": dict(model.named_modules()),
        "config": None if config is None else config.to_dict(),
        "num_labels": getattr(model, "num_labels", None),
    }


def _assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for name, tensor in before["state"].items():
        other = after["state"][name]
        assert other.dtype == tensor.dtype and other.shape == tensor.shape, name
        assert torch.equal(other, tensor), f"{name} changed"
    assert after["requires_grad"] == before["requires_grad"]
    assert after["modules"].keys() == before["modules"].keys()
    for name, module in before["modules"].items():
        assert after["modules"][name] is module, f"module {name!r} was replaced"
    assert after["config"] == before["config"]
    assert after["num_labels"] == before["num_labels"]


@pytest.fixture
def snapshot():
    """``snapshot(model)`` records weights, trainability, modules, config and the cached ``num_labels``."""
    return _snapshot


@pytest.fixture
def assert_unchanged():
    """``assert_unchanged(model, snapshot)`` fails on any difference from the snapshot (tensors bit for bit)."""
    return _assert_unchanged
