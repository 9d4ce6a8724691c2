"""Wall-time limits as one hook: ``time_limit_minutes`` (a hard stop) and
``time_budget_minutes`` (the run's length planned to fit; the maths is in ``budget.py``).

With a budget the hook times the probe steps, a validation and a checkpoint, plans the
number of steps and stretches the schedule to it, plans again every ``REPLAN_EVERY`` steps at
the pace the run keeps, and stops the run when only the closing validation and checkpoint
still fit.
"""

from __future__ import annotations

import dataclasses
import math

from torch.utils.data import Subset

from . import clock
from .budget import REPLAN_EVERY, Budget, Costs, minutes, moved, plan_steps
from .distributed import all_reduce_max
from .hooks import Hook, StepInfo
from .loop import evaluate_on
from .resume import save, stretch_schedule
from .state import Position, Progress, Run

__all__ = ["Timer"]


class Timer(Hook):
    """Stop past ``limit_minutes`` (0: no limit); with ``budget``, size the run to end
    inside it."""

    def __init__(self, limit_minutes: float, budget: Budget | None) -> None:
        self.limit_minutes, self.budget = limit_minutes, budget
        self._validation_began = self._save_began = 0.0

    def on_step_end(self, run: Run, progress: Progress, info: StepInfo) -> str | None:
        if self.budget is not None:
            self._follow(run, progress, info)
        return "time limit" if self._up(run) else None

    def should_stop(self, run: Run, progress: Progress) -> str | None:
        return "time limit" if self._up(run) else None

    def _up(self, run: Run) -> bool:
        """Past the time limit, or so near the budget's end that only the closing
        validation and checkpoint still fit."""
        since_start = clock.now() - run.started
        up = bool(self.limit_minutes) and since_start > self.limit_minutes * 60
        if self.budget is not None:
            up = up or self.budget.up(since_start)
        return up

    def on_validation_start(self, run: Run, progress: Progress) -> None:
        self._validation_began = clock.now()

    def on_validation_end(self, run: Run, progress: Progress, metrics: dict) -> None:
        if self.budget is not None:
            self.budget.validated(clock.now() - self._validation_began)

    def on_save_start(self, run: Run, progress: Progress) -> None:
        if self.budget is not None:
            progress.position.seconds = self.budget.spent(clock.now() - run.started)
        self._save_began = clock.now()

    def on_save_end(self, run: Run, progress: Progress) -> None:
        if self.budget is not None:
            self.budget.saved(clock.now() - self._save_began)

    def on_restore(self, run: Run, progress: Progress, record) -> None:
        if self.budget is not None:
            self.budget.spent_before = progress.position.seconds

    def _follow(self, run: Run, progress: Progress, info: StepInfo) -> None:
        """Plan the run's length after timing the probe steps (a resumed run: after timing
        them again), then again every ``REPLAN_EVERY`` steps at the pace the run keeps."""
        budget, position = self.budget, progress.position
        assert budget is not None
        if budget.costs is None:
            budget.observe(info.seconds)
            if budget.probe_done():
                self._plan(run, progress, self._probe_costs(run, progress))
        elif position.iteration % REPLAN_EVERY == 0:
            spent = budget.spent(clock.now() - run.started)
            pace = budget.pace(position.iteration, spent)
            if pace is not None:
                self._plan(run, progress, dataclasses.replace(budget.costs, step=pace))

    def _probe_costs(self, run: Run, progress: Progress) -> Costs:
        """A step (the probe's median), a validation (its first images) and a checkpoint."""
        assert self.budget is not None
        validation = _validation_cost(run)
        began = clock.now()
        save(run, progress, finished=False)  # timed, and a checkpoint to resume from
        seconds = clock.now() - began
        run.model.train()
        return Costs(step=self.budget.step_cost(), validation=validation, save=seconds)

    def _plan(self, run: Run, progress: Progress, costs: Costs) -> None:
        """Size the run to end inside the budget at ``costs``; the schedule follows a new
        plan."""
        budget, position = self.budget, progress.position
        assert budget is not None
        budget.costs = costs
        spent = budget.spent(clock.now() - run.started)
        budget.planned(position.iteration, spent)
        planned = plan_steps(
            budget.seconds,
            spent,
            position.iteration,
            costs,
            steps_per_epoch=run.steps_per_epoch,
            eval_every=run.config.eval_every,
            checkpoint_every=run.config.checkpoint_every,
            upper=run.total_iters,
        )
        planned = int(all_reduce_max(float(planned), run.context))  # every rank the same
        first = not position.planned_iters
        if not first and not moved(position.planned_iters, planned):
            return
        position.planned_iters = planned
        stretch_schedule(run.scheduler, planned)
        run.feedback.retotal(planned)
        self._announce(run, position, costs, first=first)

    def _announce(self, run: Run, position: Position, costs: Costs, *, first: bool) -> None:
        assert self.budget is not None
        planned = position.planned_iters
        run.log.write(
            {
                "event": "plan",
                "iteration": position.iteration,
                "planned_iters": planned,
                "step_s": costs.step,
                "validation_s": costs.validation,
                "save_s": costs.save,
            }
        )
        capped = " (capped by epochs / max_iters)" if planned == run.total_iters else ""
        when = "" if first else f" at step {position.iteration}, planned again"
        run.feedback.write(
            f"time budget {minutes(self.budget.seconds)}{when}: a step takes {costs.step:.2f} "
            f"s, a validation {minutes(costs.validation)}, a checkpoint {costs.save:.1f} s; "
            f"planned {planned} steps ({planned / run.steps_per_epoch:.1f} epochs){capped}"
        )


def _validation_cost(run: Run, images: int = 4) -> float:
    """Seconds of one validation pass, from timing its first few images (after one
    untimed image: the first allocates)."""
    val = run.data.val
    count = min(images, len(val))
    evaluate_on(run, Subset(val, range(1)), progress=False)
    began = clock.now()
    evaluate_on(run, Subset(val, range(count)), progress=False)
    per_image = (clock.now() - began) / count
    return per_image * math.ceil(len(val) / run.context.world_size)
