"""Leave one task out: how the router does on a kind of prompt it was never trained on.

For each task T of the data: the other tasks' train split trains, their
validation split selects and calibrates (as ``train`` always does), and T's
rows are the held-out "test". As in ``cross_validate``, only the train and
validation splits of every task are read by default, so the test split stays
unread while a change is being judged; ``left_out="test"`` scores T's test
split instead, for the one final report. Each task is trained ``repeats``
times with LightGBM seeds ``seed, seed + 1, ...`` (bagging and feature
fractions draw); every number is the mean over the repeats, with its standard
deviation. Baselines fit on the same training rows, so the task prior knows
nothing of T (it is the overall prior) and the kNN vote sees only the other
tasks' prompts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console

from tierwise.router.config import Config
from tierwise.training.crossval import UNGUARDED, FoldTraining, summarise
from tierwise.training.dataset import RoutingData

LeftOut = Literal["pool", "test"]
LEFT_OUT: tuple[LeftOut, ...] = ("pool", "test")
# The routers each task's line shows (pair APGR), and the tolerance the issue allows below random.
SHOWN = (
    "classifier-utility",
    "classifier-utility" + UNGUARDED,
    "classifier-threshold",
    "knn-utility",
    "task-prior-utility",
    "random",
)
RANDOM_TOLERANCE = 0.01


def task_splits(data: RoutingData, task: str, left_out: LeftOut) -> RoutingData:
    """``data`` relabelled for one left-out task: its rows (train + validation, or test) become "test", the
    other tasks keep their train and validation rows, and every other row is dropped."""
    tasks = np.array(data.tasks)
    mine = tasks == task
    pool = np.isin(data.splits, ["train", "validation"])
    held_out = mine & (pool if left_out == "pool" else data.splits == "test")
    keep = held_out | (~mine & pool)
    splits = np.where(held_out, "test", data.splits)
    return replace(data, splits=splits).subset(keep)


def leave_one_task_out(
    data: RoutingData,
    config: Config,
    *,
    tasks: Sequence[str] | None = None,
    left_out: LeftOut = "pool",
    repeats: int = 1,
    training: FoldTraining = FoldTraining(),  # noqa: B008 - frozen, never mutated
    console: Console | None = None,
) -> dict[str, Any]:
    """Train without each task in turn and evaluate on it; ``tasks`` picks which to leave out (default all)."""
    present = sorted(set(data.tasks))
    if len(present) < 2:
        raise ValueError(f"leaving one task out needs at least two tasks, the data has {present}")
    chosen = list(tasks) if tasks else present
    unknown = sorted(set(chosen) - set(present))
    if unknown:
        raise ValueError(f"no rows of task(s) {unknown}; the data's tasks: {present}")
    if left_out not in LEFT_OUT:
        raise ValueError(f"left_out must be one of {LEFT_OUT}, got {left_out!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    console = console or Console(stderr=True)
    per_task: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tierwise-task-cv-") as scratch:
        for task in chosen:
            relabelled = task_splits(data, task, left_out)
            runs = []
            for repeat in range(repeats):
                directory = Path(scratch) / f"{len(per_task)}-{repeat}"
                report, numbers = training.run(relabelled, config, directory, console, repeat)
                runs.append(numbers)
                console.log(
                    f"left out {task} (repeat {repeat}): {report['prompts']} prompts, classifier-utility "
                    f"APGR {numbers['classifier-utility']['apgr']}, random {numbers['random']['apgr']}"
                )
            per_task[task] = {"prompts": report["prompts"], "summary": summarise(runs), "per_repeat": runs}
    seed = training.lightgbm_seed
    return {
        "by": "task",
        "left_out": left_out,
        "repeats": repeats,
        "lightgbm_seeds": [seed + r for r in range(repeats)],
        "neighbour_weight": training.neighbour_weight,
        "note": (
            "each task's rows scored by a model trained on the other tasks' train split (validation split: "
            "selection and calibration); "
            + (
                "train and validation rows only, the test split unread"
                if left_out == "pool"
                else "the left-out task's test split scored"
            )
        ),
        "per_task": per_task,
        "mean_over_tasks": _mean_over_tasks(per_task),
    }


def _mean_over_tasks(per_task: dict[str, Any]) -> dict[str, float]:
    """Each router's pair APGR (repeat means), averaged over the left-out tasks."""
    out: dict[str, float] = {}
    first = next(iter(per_task.values()))["summary"]
    for name, entry in first.items():
        if "apgr" not in entry:
            continue
        out[name] = round(float(np.mean([t["summary"][name]["apgr"]["mean"] for t in per_task.values()])), 6)
    return out


def summary_lines(result: dict[str, Any]) -> str:
    split = "train+validation rows" if result["left_out"] == "pool" else "test split"
    widths = [max(len(name), 15) for name in SHOWN]
    lines = [
        f"leave one task out: pair APGR on each left-out task's {split}, mean ± sd over "
        f"{result['repeats']} LightGBM seed(s)",
        f"{'left-out task':16s} {'prompts':>7s} "
        + " ".join(f"{n:>{w}s}" for n, w in zip(SHOWN, widths, strict=True))
        + f" {'flagged':>9s}",
    ]
    for task, entry in result["per_task"].items():
        summary = entry["summary"]
        cells = []
        for name, width in zip(SHOWN, widths, strict=True):
            apgr = summary.get(name, {}).get("apgr")
            cells.append(
                f"{'':>{width}s}" if apgr is None else f"{apgr['mean']:.4f} ±{apgr['sd']:.3f}".rjust(width)
            )
        random = summary["random"]["apgr"]["mean"]
        verdict = (
            "" if summary["classifier-utility"]["apgr"]["mean"] >= random - RANDOM_TOLERANCE else "  < random"
        )
        flagged = summary.get("unfamiliar", {}).get("share")
        cells.append(f"{'':>9s}" if flagged is None else f"{flagged['mean']:9.3f}")
        lines.append(f"{task:16s} {entry['prompts']:7d} " + " ".join(cells) + verdict)
    means = result["mean_over_tasks"]
    lines.append(
        f"{'mean':16s} {'':>7s} "
        + " ".join(
            (f"{means[n]:.4f}{'':7s}".rjust(width) if n in means else " " * width)
            for n, width in zip(SHOWN, widths, strict=True)
        )
    )
    lines.append(
        f"< random: classifier-utility below random's APGR - {RANDOM_TOLERANCE} (random: its expected curve, APGR 0.5)"
    )
    lines.append("flagged: the share of the task's prompts the unfamiliar guard flagged (blank: no guard)")
    return "\n".join(lines)
