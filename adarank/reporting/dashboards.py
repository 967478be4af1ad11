"""wandb panels for rank allocation; the only module that imports wandb (lazily, on process 0).

``setup_wandb`` decides once, for the Trainer and the loop alike, how a run logs (mode, project,
directory, the run's name); ``log_run_report`` adds the run report's figures, metrics and samples.

``WandbDashboard`` is a Trainer callback placed after ``AdaRankCallback``. It logs into the run that
transformers' own WandbCallback opened (one run, not two), or opens one itself. Without the Trainer
(``adarank.training.engine``, the FSDP2 path of ``adarank train``) call its methods: ``begin``, ``log_event`` at
each masking step, ``log_train`` per log entry, ``end``.
At each masking step: budget b(t), live budget, score threshold, orthogonality penalty, per-module
rank ``rank/<module>``, a histogram of triplet scores and the rank heatmap (a Table drawn by the
Vega-Lite spec in ``adarank/vega/rank_heatmap.json`` plus an Image that renders anywhere), all
against ``train/global_step``. At the end: the heatmap, planned vs realized budget, a bar chart of
final ranks, and summary fields. Any wandb failure is reported once and training goes on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from adarank.core.allocator import RankAllocator
from adarank.core.regularization import orthogonality_penalty
from adarank.core.schedule import budget_at
from adarank.reporting.report import plot_heatmap, rank_grid

HEATMAP_SPEC = Path(__file__).parent / "vega" / "rank_heatmap.json"
HEATMAP_PRESET = "adarank/rank-heatmap"
STEP_KEY = "train/global_step"


def has_wandb_login() -> bool:
    """Whether wandb has credentials here (WANDB_API_KEY, or `wandb login`'s ~/.netrc entry)."""
    netrc = Path.home() / ".netrc"
    return bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())


def wandb_mode(configured: str | None) -> str:
    """The mode a run logs in: ``configured`` (wandb.mode); unset = online with a login, else offline.
    Online without a login falls back to offline with a message (wandb would otherwise stop the run
    asking for a key)."""
    if configured == "online" and not has_wandb_login():
        print("adarank: wandb.mode=online but no wandb login (WANDB_API_KEY or `wandb login`): logging offline; "
              "sync later with `wandb sync`.")  # fmt: skip
        return "offline"
    if configured:
        return configured
    return "online" if has_wandb_login() else "offline"


def setup_wandb(configured_mode: str | None, project: str, run_dir: Path) -> bool:
    """Decide, once for both training paths, how a run logs to wandb: the mode (``wandb_mode``), the
    project, the directory (``run_dir``/wandb) and the run's name (the run directory's), as the WANDB_*
    environment variables that transformers' WandbCallback and ``WandbDashboard.begin`` both read.
    Returns whether to log: False where the mode is disabled or wandb is not installed (said once)."""
    mode = wandb_mode(configured_mode)
    if mode == "disabled":
        return False
    if importlib.util.find_spec("wandb") is None:
        print("wandb is not installed: no dashboards (pip install 'adarank[wandb]'); training goes on.")
        return False
    os.environ.update(WANDB_MODE=mode, WANDB_DIR=str(run_dir.resolve()), WANDB_PROJECT=project,
                      WANDB_NAME=run_dir.resolve().name)  # fmt: skip
    return True


def log_run_report(figures: list[Path], metrics: dict[str, Any], samples: list[dict[str, str]]) -> None:
    """Into the open wandb run, then finish it: the run report's figures as ``report/<name>`` images
    (the budget plan left out: the dashboards draw it), the metrics as ``final/<key>`` summary fields,
    and the generated samples as the table ``report/samples``. Nothing when no run is open."""
    import wandb

    if wandb.run is None:
        return
    wandb.log({f"report/{png.stem}": wandb.Image(str(png)) for png in figures if png.stem != "budget_plan"})
    wandb.run.summary.update({f"final/{k}": v for k, v in metrics.items()})
    if samples:
        keys = ["prompt", "reference", "generated"]
        table: list[list[Any]] = [[sample[k] for k in keys] for sample in samples]
        wandb.log({"report/samples": wandb.Table(columns=list(keys), data=table)})
    wandb.finish()


def heatmap_rows(ranks: dict[str, int]) -> list[list[Any]]:
    """Rows (layer, type, rank) of the heatmap table, one per adapter inside a numbered layer."""
    grid = rank_grid(ranks)
    return [
        [layer, kind, cell]
        for layer, cells in zip(grid.layers, grid.cells, strict=True)
        for kind, cell in zip(grid.types, cells, strict=True)
        if cell is not None
    ]


class WandbDashboard(TrainerCallback):
    """Rank-allocation panels in wandb. Add it after ``AdaRankCallback``, or call ``begin`` /
    ``log_event`` / ``log_train`` / ``end`` from a loop; it never changes training.

    Args:
        allocator: the allocator the AdaRankCallback drives.
        project: wandb project, used only when no run is open yet.
        trainable_initial: trainable parameters at the start, for the summary.
    """

    def __init__(self, allocator: RankAllocator, project: str = "adarank", trainable_initial: int | None = None):
        self.allocator = allocator
        self.project = project
        self.trainable_initial = trainable_initial
        self.history: list[dict[str, Any]] = []
        self._wandb: Any = None
        self._owns_run = False

    @property
    def active(self) -> bool:
        """Whether ``begin`` joined or opened a wandb run (False before it, or where wandb failed)."""
        return bool(self._wandb)

    def begin(self, config: dict[str, Any] | None = None) -> None:
        """Join the open wandb run, or open one in ``project`` with ``config`` attached (then ``end``
        finishes it; its mode, directory and name from ``setup_wandb``'s environment). Call it on
        process 0 only; the Trainer hook does."""
        if self._wandb is not None:
            return
        if importlib.util.find_spec("wandb") is None:
            print("adarank: wandb is not installed (pip install 'adarank[wandb]'): no dashboards; training goes on.")
            self._wandb = False
            return
        import wandb

        try:
            if wandb.run is None:
                wandb.init(project=self.project, config=config)
                self._owns_run = True
            wandb.define_metric(STEP_KEY)
            for prefix in ("adarank", "rank", "train", "eval"):
                wandb.define_metric(f"{prefix}/*", step_metric=STEP_KEY)
            self._wandb = wandb
        except Exception as err:  # no login, no network: say so once, train on
            print(f"adarank: wandb could not start ({err}); no dashboards, training goes on.")
            self._wandb = False

    def log_event(self, event: dict[str, Any], penalty: float | None = None) -> None:
        """The panels of one masking step (``allocator.last_event``). ``penalty``: the orthogonality
        penalty after it; left out, it is computed here from the whole adapters, which under FSDP2 is a
        collective every process must join: there compute it on every process and pass it."""
        if not self._wandb:
            return
        self.history.append(event)
        wandb = self._wandb
        adapters = self.allocator.adapters.values()
        if penalty is None and adapters:
            with torch.no_grad():
                penalty = float(orthogonality_penalty(adapters, live_only=self.allocator.finalized))
        payload: dict[str, Any] = {
            STEP_KEY: event["step"],
            "adarank/budget": event["budget"],
            "adarank/live": event["live"],
            "adarank/live_rank": sum(event["ranks"].values()),
            "adarank/threshold": event["threshold"],
            "adarank/orth_penalty": penalty or 0.0,
            "adarank/triplet_scores": wandb.Histogram(self.allocator.masked_scores),  # every triplet's score
            **{f"rank/{name}": rank for name, rank in event["ranks"].items()},
            **self._heatmap(event["ranks"], f"rank at step {event['step']}", "adarank/"),
        }
        wandb.log(payload)

    def log_train(self, entry: dict[str, Any]) -> None:
        """One log entry of a loop without the Trainer (``adarank.training.engine``): ``eval_<name>`` as
        ``eval/<name>``, the rest as ``train/<name>``, against ``train/global_step`` (the names the
        Trainer's own wandb logging uses)."""
        if not self._wandb:
            return
        values = {
            (f"eval/{k.removeprefix('eval_')}" if k.startswith("eval_") else f"train/{k}"): v
            for k, v in entry.items()
            if k != "step"
        }
        self._wandb.log({STEP_KEY: entry["step"], **values})

    def end(self, step: int, finish: bool = True) -> None:
        """The final panels and summary at ``step``; finishes the run if ``begin`` opened it and
        ``finish`` (``adarank train`` keeps it open for ``log_run_report``)."""
        if not self._wandb or not self.allocator.adapters:  # the head alone: no rank to show
            return
        wandb = self._wandb
        plan = self.allocator.plan
        ranks = self.allocator.ranks()
        steps = [e["step"] for e in self.history]
        final_table = wandb.Table(columns=["module", "rank"], data=[[n, r] for n, r in ranks.items()])
        payload: dict[str, Any] = {
            STEP_KEY: step,
            **self._heatmap(ranks, "final rank", "final/"),
            "final/rank_table": final_table,
            "final/rank_bar": wandb.plot.bar(final_table, "module", "rank", title="final rank per module"),
        }
        if plan is not None and steps:
            payload["final/budget_curve"] = wandb.plot.line_series(
                xs=steps,
                ys=[[budget_at(t, plan) for t in steps], [e["live"] for e in self.history]],
                keys=["planned b(t)", "realized"],
                title=f"budget ({plan.unit})",
                xname="step",
            )
        wandb.log(payload)
        costs = self.allocator.triplet_costs
        initial = sum(r * costs[n] for n, r in self.allocator.initial_ranks.items())
        final = sum(r * costs[n] for n, r in ranks.items())
        wandb.run.summary.update(
            {
                "adarank/final_ranks": json.dumps(ranks),
                "adarank/compression_ratio": final / initial,
                "adarank/adapter_params_initial": initial,
                "adarank/adapter_params_final": final,
                **({"adarank/trainable_params_initial": self.trainable_initial} if self.trainable_initial else {}),
            }
        )
        if self._owns_run and finish:
            wandb.finish()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self.begin()

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        event = self.allocator.last_event
        if event is not None and event["step"] == state.global_step + 1:
            self.log_event(event)

    def _heatmap(self, ranks: dict[str, int], title: str, prefix: str) -> dict[str, Any]:
        wandb = self._wandb
        table = wandb.Table(columns=["layer", "type", "rank"], data=heatmap_rows(ranks))
        chart = wandb.plot_table(HEATMAP_PRESET, table, {"layer": "layer", "type": "type", "rank": "rank"})
        from PIL import Image  # wandb's own dependency

        with (
            tempfile.TemporaryDirectory() as folder,
            Image.open(plot_heatmap(ranks, Path(folder) / "h.png", title)) as png,
        ):
            image = wandb.Image(png.convert("RGB"))  # in memory: wandb reads files lazily
        return {
            f"{prefix}rank_heatmap_table": table,
            f"{prefix}rank_heatmap": chart,
            f"{prefix}rank_heatmap_image": image,
        }

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.end(state.global_step)


ANALYSIS_COLUMNS = ["module", "rank", "effective_rank", "energy_rank_90", "relative_norm", "amplification",
                    "phi_output", "phi_input", "phi_chance"]  # fmt: skip


def log_analysis(run_dir: Path, result: dict[str, Any], figures: list[Path]) -> str | None:
    """Log an ``adarank analyze`` result into the wandb run of ``run_dir`` (the newest under its wandb/
    folder), resumed by id in the mode it ran in: the table ``analysis/modules``, the figures as
    ``analysis/<name>`` images and summary means. Returns the run id; None where the run had no wandb
    run, wandb is missing or disabled (WANDB_MODE=disabled), or logging failed (reported, never raised).
    An offline run gets a second offline folder with the same id: `wandb sync` both.
    """
    import os

    runs = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.name.split("run-", 1)[1])
    runs = [p for p in runs if p.is_dir() and not p.is_symlink()]
    if not runs or os.environ.get("WANDB_MODE") == "disabled" or importlib.util.find_spec("wandb") is None:
        return None
    newest = runs[-1].name
    run_id, mode = newest.rsplit("-", 1)[1], "offline" if newest.startswith("offline-") else "online"
    try:
        import wandb
        from omegaconf import OmegaConf

        project = OmegaConf.select(OmegaConf.load(run_dir / "config.yaml"), "wandb.project", default="adarank")
        run = wandb.init(id=run_id, resume="allow", project=project, dir=str(run_dir), mode=mode)  # type: ignore[arg-type]
        rows = []
        for name, m in result["modules"].items():
            sim = m.get("similarity") or {}
            out, inp = sim.get("output") or {}, sim.get("input") or {}
            rows.append([name, m["rank"], m["effective_rank"], m["energy_rank_90"], m["relative_norm"],
                         m["amplification"], out.get("phi_at_min_rank"), inp.get("phi_at_min_rank"),
                         out.get("chance_at_min_rank")])  # fmt: skip
        logged: dict[str, Any] = {"analysis/modules": wandb.Table(columns=list[Any](ANALYSIS_COLUMNS), data=rows)}
        logged |= {f"analysis/{png.stem}": wandb.Image(str(png)) for png in figures}
        run.log(logged)
        modules = list(result["modules"].values())
        run.summary.update({
            "analysis/mean_effective_rank": sum(m["effective_rank"] for m in modules) / max(len(modules), 1),
            "analysis/modules": len(modules),
        })  # fmt: skip
        run.finish()
    except Exception as err:  # wandb must never fail the command
        print(f"adarank: logging the analysis to wandb failed ({type(err).__name__}: {err}); the files are written.")
        return None
    return run_id
