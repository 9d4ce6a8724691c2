"""A training schedule sized by wall time: ``time_budget_minutes``.

A practitioner on a CPU knows how long they can wait, not how many steps fit in it. With a
time budget the run takes its first ``PROBE_STEPS`` steps as the config says, then measures
what a step, a validation and a checkpoint cost on this machine, and fixes the number of
optimizer steps (``plan_steps``) so that training, every validation the config asks for, the
checkpoints and the final report end inside the budget. The learning-rate schedule (poly,
cosine) is stretched or shrunk to end at that step, so the run is a whole schedule and not a
long one cut off. ``epochs`` / ``max_iters`` stay an upper bound.

The plan follows the run's own pace: every ``REPLAN_EVERY`` steps it is made again, a step
now costing what the latest ``PACE_STEPS`` steps took on average (``Budget.pace``: their
data, logging and epoch starts included; validations and checkpoints, timed as they happen,
are planned on their own), and the schedule is re-sized when the plan moves by more than
``SLACK``: a machine busier for good than during the probe, overheads the probe did not
see. A minute of other work on the machine moves the plan by a few steps, not by half.

The planned length is saved in every checkpoint, so a resumed run continues to it; the time
already spent is saved too and counts against the budget. The budget is also a hard limit:
should the last stretch still overrun, the run stops early (evaluated and saved, as with
``time_limit_minutes``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field

__all__ = [
    "PROBE_STEPS",
    "REPLAN_EVERY",
    "PACE_STEPS",
    "Costs",
    "plan_steps",
    "moved",
    "Budget",
    "minutes",
]

PROBE_STEPS = 12  # steps timed before the plan; the first few (allocations) are left out
REPLAN_EVERY = 50  # steps between two plans once the first is made
PACE_STEPS = 250  # at most this many of the latest steps give the pace of a re-plan
SLACK = 0.01  # a re-plan moving the plan by at most this share of it leaves it as it is
_SKIP = 2  # probe steps not counted: the first steps allocate and warm caches
RESERVE = 0.03  # of the budget, kept for what the plan cannot see (loader start-up, report)


@dataclass(frozen=True)
class Costs:
    """Seconds each part of a run costs on this machine, measured by the probe."""

    step: float  # one optimizer step, data loading included
    validation: float  # one whole validation pass
    save: float  # one checkpoint (last.pt, and best.pt beside it at worst)


def _validations(done: int, total: int, steps_per_epoch: int, eval_every: int) -> int:
    """Validations the loop runs from step ``done`` to ``total``: at the end of every
    ``eval_every``-th epoch, and once at the end when ``total`` is not such an epoch end."""
    period = steps_per_epoch * eval_every
    count = total // period - done // period
    return count + (0 if total % period == 0 else 1)


def _saves(done: int, total: int, steps_per_epoch: int, checkpoint_every: int) -> int:
    """Checkpoints written from step ``done`` to ``total``: every epoch end, every
    ``checkpoint_every`` steps, and at the end."""
    count = total // steps_per_epoch - done // steps_per_epoch + 1
    if checkpoint_every:
        count += total // checkpoint_every - done // checkpoint_every
    return count


def plan_steps(
    budget: float,
    spent: float,
    done: int,
    costs: Costs,
    *,
    steps_per_epoch: int,
    eval_every: int = 1,
    checkpoint_every: int = 0,
    upper: int,
) -> int:
    """The most optimizer steps (at least ``done``, at most ``upper``) whose remaining
    training, validations and checkpoints end within ``budget`` seconds, ``spent`` of them
    gone with ``done`` steps taken. The budget keeps a reserve of ``RESERVE``."""
    left = budget * (1.0 - RESERVE) - spent

    def cost(total: int) -> float:
        return (
            (total - done) * costs.step
            + _validations(done, total, steps_per_epoch, eval_every) * costs.validation
            + _saves(done, total, steps_per_epoch, checkpoint_every) * costs.save
        )

    low, high = done, max(done, upper)  # cost grows with total: the largest that fits
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= left:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass
class Budget:
    """The budget of one run: the probe's step times, the time spent before this process
    (a resumed run's), the costs the latest plan used, and what has been spent since it."""

    seconds: float
    spent_before: float = 0.0
    step_times: list[float] = field(default_factory=list)
    costs: Costs | None = None  # once the probe has measured them
    # (iteration, seconds spent, seconds set aside) at each recent plan
    marks: list[tuple[int, float, float]] = field(default_factory=list)
    aside: float = 0.0  # seconds of validations and checkpoints so far (in this process)

    def observe(self, seconds: float) -> None:
        self.step_times.append(seconds)

    def probe_done(self) -> bool:
        return len(self.step_times) >= PROBE_STEPS

    def step_cost(self) -> float:
        """The median step after the first few: robust to a slow step now and then."""
        return statistics.median(self.step_times[_SKIP:] or self.step_times)

    def planned(self, iteration: int, spent: float) -> None:
        """A plan was made at ``iteration`` with ``spent`` seconds gone: later paces may
        count from here."""
        self.marks.append((iteration, spent, self.aside))
        self.marks = [m for m in self.marks if iteration - m[0] <= PACE_STEPS + REPLAN_EVERY]

    def pace(self, iteration: int, spent: float) -> float | None:
        """Seconds a step has cost over the latest ``PACE_STEPS`` steps (from the oldest
        plan within them), everything but validations and checkpoints included; None
        before there is a step to count."""
        earlier = [m for m in self.marks if m[0] < iteration]
        if not earlier:
            return None
        start = next((m for m in earlier if iteration - m[0] <= PACE_STEPS), earlier[-1])
        steps, seconds = iteration - start[0], spent - start[1] - (self.aside - start[2])
        return max(0.0, seconds) / steps

    def validated(self, seconds: float) -> None:
        """A whole validation took ``seconds``: later plans and the hard stop count that."""
        self.aside += seconds
        if self.costs is not None:
            self.costs = dataclasses.replace(self.costs, validation=seconds)

    def saved(self, seconds: float) -> None:
        """A checkpoint (last.pt, perhaps best.pt) took ``seconds`` to write."""
        self.aside += seconds
        if self.costs is not None:
            self.costs = dataclasses.replace(self.costs, save=seconds)

    def spent(self, since_start: float) -> float:
        return self.spent_before + since_start

    def up(self, since_start: float) -> bool:
        """Whether the run must stop now to finish inside the budget: what is left would
        not hold the closing validation and checkpoints (last.pt and best.pt), with half
        as much again for a machine busier than when they were timed."""
        closing = 1.5 * (self.costs.validation + 2 * self.costs.save) if self.costs else 0.0
        return self.spent(since_start) + closing >= self.seconds


def moved(planned: int, new: int) -> bool:
    """Whether a new plan differs from the current one by more than ``SLACK``."""
    return abs(new - planned) > SLACK * planned


def minutes(seconds: float) -> str:
    """A duration for people: ``1 h 05 min``, ``12.5 min``, ``40 s`` or ``0.3 s``."""
    if seconds >= 3600:
        hours, rest = divmod(math.ceil(seconds / 60), 60)
        return f"{hours} h {rest:02d} min"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
