"""Fixtures and helpers shared by several test modules (test modules never import each other)."""
import pytest
import torch
from torch import nn


def randomise_norm_stats(model: nn.Module, seed: int = 0) -> None:
    """Give every (frozen) batch norm non-trivial statistics so that a mix-up of mean/var/weight/bias shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "running_mean") and hasattr(m, "running_var") and hasattr(m, "weight"):
            c = m.running_mean.numel()
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


@pytest.fixture(name="randomise_norm_stats", scope="session")
def randomise_norm_stats_fixture():
    """``randomise_norm_stats(model, seed=0)`` for the tests that take it as a fixture."""
    return randomise_norm_stats


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one intra-op thread, then restore the setting.

    For modules of many tiny tensors: with a busy 2-core machine, intra-op threads only add waiting
    (measured 30x slower). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
