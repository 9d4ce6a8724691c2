"""AdaptiveThreads: one thread unless more measurably pay; back to one at the first slow step."""

import pytest
import torch

from fcnseg.training import threads as threads_module
from fcnseg.training.stages import StepInfo
from fcnseg.training.threads import AdaptiveThreads, probe_threads


@pytest.fixture(autouse=True)
def _restore_threads():
    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


def _step(seconds, iteration=1):
    return StepInfo(iteration, 0, 1.0, 0.1, 8, seconds)


def test_moves_up_only_when_every_probe_round_wins_then_falls_back(monkeypatch):
    timings = {1: 0.010, 2: 0.004}
    monkeypatch.setattr(threads_module, "probe_threads", lambda n, net: timings[n])
    tuner = AdaptiveThreads(2, period=5, rounds=3)
    assert torch.get_num_threads() == 1
    for i in range(3):
        tuner(_step(1.0, i))
    assert tuner.threads == 2 and torch.get_num_threads() == 2  # probed at the 3rd step
    tuner(_step(0.6))  # faster: kept
    assert tuner.threads == 2
    tuner(_step(1.5))  # slower than the one-thread steps: the machine got busy
    assert tuner.threads == 1 and torch.get_num_threads() == 1
    timings[2] = 0.009  # more threads no longer win by a clear margin
    for i in range(5):
        tuner(_step(1.0, i))
    assert tuner.threads == 1


def test_probe_measures_something():
    assert 0 < probe_threads(1) < 5
