"""`hf-unlearn sweep`: one recipe, run once per (optimizer, seed), attacked, compared in one report.

The question it answers for a user's own model and data: does a lower-grade optimizer make unlearning harder to
undo, and at what cost in forgetting and utility? Each *cell* (optimizer, seed) is an ordinary `pipeline.run` of
the recipe in its own folder ``<output_dir>/<optimizer>_seed<seed>`` with the robustness checks on (relearning
curve, a 4-bit and an 8-bit quantization, the share of quantization codes unlearning changed). The sweep then adds
the controls (the model before unlearning, the retain model when the recipe names one, and Gaussian noise matched
tensor by tensor to each zeroth-order or hybrid run's weight change) and writes ``sweep_report.json`` (schema:
docs/sweep.md), ``sweep_report.md`` (the paper's table, mean ± sample standard deviation over seeds) and plots.

Fair comparisons:

- *utility-matched*: with ``checkpoints=N`` each run saves N checkpoints; their model utility is evaluated, and each
  run is attacked at the checkpoint whose utility is closest to a target (default: AdamW's mean final utility);
  the report says how far each match is. Only the matched checkpoint is attacked, the cheapest correct way.
- *compute-matched*: every run's forward/backward passes come from its report's compute accounting; with
  ``compute_budget`` every run stops once its passes reach the same budget.

Cells run one after another in one process: the data, the tokenizer, the benchmark (with the retain model's
statistics) and the original model are loaded once, and the controls are evaluated once. A killed sweep resumes: a
cell whose ``unlearn_report.json`` is complete is not run again; an incomplete cell is run again from scratch.
For separate launches (``accelerate launch``, a cluster array job) run single cells with ``only=["adamw:0"]``
(``--only adamw:0``); a final run without ``only`` finds them finished and writes the report.

Modules: ``plan`` (optimizers, cells, resume), ``run`` (cells, checkpoints, utility-matched attacks, the report),
``controls``, ``stats`` (records, columns, mean ± std), ``render`` (Markdown and plots) and ``schema``
(:class:`SweepReport`, what ``sweep_report.json`` holds). The optimizers' labels and grades come from the optimizer
registry (``hf_unlearn.optim.registry``).
"""

from .controls import CONTROLS_DIR, control_rows, noise_control
from .plan import Cell, OptimizerSpec, SweepSettings, optimizers_help, plan, seeds_from, sweep_section
from .render import GRADE_PLOT, RELEARN_PLOT, SWEEP_MARKDOWN_FILE, TRADEOFF_PLOT, main_table, sweep_markdown
from .run import CHECKPOINTS_FILE, MATCHED_FILE, Evaluator, run_cell, run_sweep
from .schema import SWEEP_REPORT_FILE, SWEEP_SCHEMA_VERSION, SweepReport
from .stats import mean_std


__all__ = [
    "CHECKPOINTS_FILE",
    "CONTROLS_DIR",
    "GRADE_PLOT",
    "MATCHED_FILE",
    "RELEARN_PLOT",
    "SWEEP_MARKDOWN_FILE",
    "SWEEP_REPORT_FILE",
    "SWEEP_SCHEMA_VERSION",
    "TRADEOFF_PLOT",
    "Cell",
    "Evaluator",
    "OptimizerSpec",
    "SweepReport",
    "SweepSettings",
    "control_rows",
    "main_table",
    "mean_std",
    "noise_control",
    "optimizers_help",
    "plan",
    "run_cell",
    "run_sweep",
    "seeds_from",
    "sweep_markdown",
    "sweep_section",
]
