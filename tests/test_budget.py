"""Time-budgeted schedules: the plan's arithmetic by hand, and a run that ends in its budget."""

import dataclasses
import json

import pytest
import torch
from test_engine_train import tiny

from fcnseg.training import checkpoint as ckpt
from fcnseg.training import clock, loop
from fcnseg.training.budget import (
    PACE_STEPS,
    PROBE_STEPS,
    REPLAN_EVERY,
    RESERVE,
    Budget,
    Costs,
    moved,
    plan_steps,
)
from fcnseg.training.stages import train


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_plan_counts_steps_validations_and_checkpoints():
    # 100 s, 3 % kept back, 10 s and 10 steps gone: 87 s left. Ending at step 61 costs 51
    # steps, validations after epochs 2..6 and at the end (6 x 5 s) and checkpoints at the
    # same places (6 x 1 s): 87 s. Step 62 would cost 88 s.
    assert RESERVE == 0.03
    costs = Costs(step=1.0, validation=5.0, save=1.0)
    plan = dict(steps_per_epoch=10, upper=1000)
    assert plan_steps(100, 10, 10, costs, **plan) == 61
    # validating every second epoch: at 70 the validations are after epochs 2, 4, 6 and at
    # the end (4 x 5 s), checkpoints at 7 epoch ends (7 x 1 s), 60 steps: 87 s again
    assert plan_steps(100, 10, 10, costs, **plan, eval_every=2) == 70


def test_plan_is_capped_and_never_goes_back():
    costs = Costs(step=0.5, validation=1.0, save=0.1)
    assert plan_steps(3600, 5, 12, costs, steps_per_epoch=10, upper=100) == 100
    assert plan_steps(10, 20, 12, costs, steps_per_epoch=10, upper=100) == 12  # overspent


def test_budget_stops_before_the_closing_work_no_longer_fits():
    budget = Budget(seconds=60.0, spent_before=20.0)
    assert not budget.up(30.0)
    budget.costs = Costs(step=1.0, validation=6.0, save=2.0)
    assert not budget.up(24.9) and budget.up(25.0)  # 20 + 25 + 1.5 x (6 + 2 x 2) = 60


def test_step_cost_leaves_out_the_first_steps():
    budget = Budget(seconds=60.0)
    for seconds in (9.0, 5.0, 1.0, 1.2, 0.8):
        budget.observe(seconds)
    assert budget.step_cost() == 1.0


def test_pace_counts_the_latest_steps_but_not_validations_and_checkpoints():
    budget = Budget(seconds=6000.0)
    budget.validated(30.0)  # before the first plan: no costs to update yet
    assert budget.costs is None and budget.pace(10, 50.0) is None
    budget.costs = Costs(step=1.0, validation=5.0, save=0.5)
    budget.planned(iteration=12, spent=20.0)
    assert budget.pace(12, 20.0) is None
    budget.validated(8.0)
    budget.saved(0.75)
    # 50 steps later 128.75 s are spent: 8.75 s of them validating and saving, 100 s stepping
    assert budget.pace(62, 128.75) == pytest.approx(2.0)
    assert budget.costs == Costs(step=1.0, validation=8.0, save=0.75)
    spent, iteration = 128.75, 62
    for _ in range(PACE_STEPS // REPLAN_EVERY):  # then 1 s a step, a plan every 50 steps
        budget.planned(iteration, spent)
        iteration, spent = iteration + REPLAN_EVERY, spent + REPLAN_EVERY
    assert budget.pace(iteration, spent) == pytest.approx(1.0)  # the 2 s steps are too old
    budget.planned(iteration, spent)
    # a minute of other work: the next 50 steps take 110 s; the pace is that of the latest
    # 250 steps (200 at 1 s and these), not 2.2 s
    assert budget.pace(iteration + 50, spent + 110) == pytest.approx(310 / 250)
    assert not moved(1000, 1010) and moved(1000, 989) and moved(1000, 1011)


class SimulatedClock:
    """The engine's clock on simulated time: it stands still except when a training step
    advances it by ``step`` seconds (``slow_after``: from that step on, ``slower`` seconds),
    so a budgeted run plans and stops the same way on any machine, with no real waiting."""

    def __init__(self, monkeypatch, step: float, slower: float | None = None, slow_after=0):
        self.seconds, self.step, self.slower, self.slow_after = 1000.0, step, slower, slow_after
        monkeypatch.setattr(clock, "now", lambda: self.seconds)
        train_step = loop.train_step

        def timed_step(run, position, micro, laps=None):
            result = train_step(run, position, micro, laps)
            slow = self.slower is not None and position.iteration >= self.slow_after
            self.seconds += self.slower if slow else self.step
            return result

        monkeypatch.setattr(loop, "train_step", timed_step)


@pytest.mark.slow
def test_a_budgeted_run_plans_its_length_and_ends_inside_the_budget(tmp_path, monkeypatch):
    budget_minutes, step = 0.3, 0.5
    simulated = SimulatedClock(monkeypatch, step=step)
    config = tiny(tmp_path, epochs=1000, time_budget_minutes=budget_minutes, overlays=0)
    # AdamW at 1e-3 stays finite for the hundreds of steps a plan may hold (the tiny
    # config's SGD at 1e-2 on summed losses diverged after 128)
    config = dataclasses.replace(config, optimizer="adamw", lr=1e-3)
    began = simulated.seconds
    result = train(config)
    elapsed = simulated.seconds - began
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    plans = [r for r in records if r["event"] == "plan"]
    assert plans[0]["iteration"] == PROBE_STEPS and plans[0]["planned_iters"] > PROBE_STEPS
    assert all(r["iteration"] % REPLAN_EVERY == 0 for r in plans[1:])
    plan = plans[-1]
    last = ckpt.load_checkpoint(run / "last.pt")
    assert last.training["planned_iters"] == plan["planned_iters"]
    assert last.training["seconds"] <= budget_minutes * 60  # training, validations, saves
    assert elapsed <= budget_minutes * 60  # on simulated time only the steps take any
    assert result.stopped == "finished"  # steps keep their pace: the plan holds
    assert result.iterations == plan["planned_iters"]  # the schedule was sized to the plan
    # the budget at 0.5 s a step, less the reserve: the plan fills it
    steps = budget_minutes * 60 / step
    assert (1 - RESERVE) * steps - 2 <= result.iterations <= steps
    final_lr = [r["lr"] for r in records if r["event"] == "train"][-1]
    assert final_lr < 0.1 * config.resolved().lr  # ... and ran out there
    again = train(config, resume=True)  # a resumed run keeps the plan: nothing left to do
    assert again.iterations == result.iterations and again.stopped == "finished"


@pytest.mark.slow
def test_a_run_that_slows_down_after_the_probe_is_planned_again_and_ends_its_schedule(
    tmp_path, monkeypatch
):
    """Steps three times slower after the probe: the first plan no longer fits. Planned again
    every REPLAN_EVERY steps, the run still ends inside the budget with its schedule run out,
    instead of being cut off by the hard stop at a high learning rate."""
    SimulatedClock(monkeypatch, step=0.1, slower=0.3, slow_after=PROBE_STEPS)
    budget_minutes = 0.3
    config = tiny(tmp_path, epochs=1000, time_budget_minutes=budget_minutes, overlays=0)
    config = dataclasses.replace(config, optimizer="adamw", lr=1e-3)
    result = train(config)
    lines = (result.run_dir / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    plans = [r["planned_iters"] for r in records if r["event"] == "plan"]
    assert len(plans) >= 2 and plans[-1] < 0.8 * plans[0], plans  # shrunk to the new pace
    last = ckpt.load_checkpoint(result.last_checkpoint)
    assert last.training["seconds"] <= budget_minutes * 60
    assert result.stopped == "finished" and result.iterations == plans[-1]
    final_lr = [r["lr"] for r in records if r["event"] == "train"][-1]
    assert final_lr < 0.1 * config.resolved().lr
