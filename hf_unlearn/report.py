"""`UnlearnReport`: everything a run measured (:mod:`hf_unlearn.report_schema`), written as JSON, Markdown and
plots (:mod:`hf_unlearn.report_render`) and read back."""

from __future__ import annotations

from pathlib import Path

from hf_unlearn.errors import UserInputError
from hf_unlearn.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from hf_unlearn.report_render import evaluation_plot, loss_plot, relearning_plot, report_markdown
from hf_unlearn.report_schema import (
    EVAL_PLOT,
    LOSS_PLOT,
    MARKDOWN_FILE,
    RECIPE_FILE,
    RELEARN_PLOT,
    REPORT_FILE,
    ReportData,
)


class UnlearnReport(ReportData):
    """What one run (or one comparison of models) measured, with its files: :meth:`save` writes the JSON, the
    Markdown, the recipe and the plots into a folder and :meth:`load` reads the JSON back (see docs/report.md)."""

    @classmethod
    def load(cls, output_dir: str | Path) -> UnlearnReport:
        """The report in ``output_dir/unlearn_report.json``."""
        path = Path(output_dir) / REPORT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"No {REPORT_FILE} in {output_dir}: run, eval or attack writes one there.")
        fix = "rerun the command that wrote it (run, eval or attack) into this folder"
        data = read_json(path, "The report", fix)
        if not isinstance(data, dict):
            raise UserInputError(f"The report {path} is not a JSON object (it holds a {type(data).__name__}); {fix}.")
        return cls.from_dict(data)

    # ---- files -------------------------------------------------------------------------------------------------

    def save(self, output_dir: str | Path) -> list[Path]:
        """Write the JSON, the Markdown, the recipe (if any) and the plots (where there is data); return the paths.

        Each file is written atomically; the JSON is serialised before anything is written.
        """
        out = Path(output_dir)
        document = self.to_dict()
        written = [atomic_write_json(out / REPORT_FILE, document)]
        written.append(atomic_write_text(out / MARKDOWN_FILE, self.to_markdown()))
        if self.recipe:
            import yaml

            written.append(atomic_write_text(out / RECIPE_FILE, yaml.safe_dump(self.recipe, sort_keys=False)))
        plots = (
            (LOSS_PLOT, self.plot_losses),
            (RELEARN_PLOT, self.plot_relearning),
            (EVAL_PLOT, self.plot_evaluation),
        )
        for name, plot in plots:
            figure = plot()
            if figure is not None:
                written.append(atomic_write_bytes(out / name, figure))
        return written

    def to_markdown(self) -> str:
        return report_markdown(self)

    def plot_losses(self) -> bytes | None:
        """PNG of ``loss/forget`` and ``loss/retain`` per step with FO and ZO phases shaded; None without logs."""
        return loss_plot(self)

    def plot_evaluation(self) -> bytes | None:
        """PNG of the in-run evaluations over steps, the chosen best step marked; None without them."""
        return evaluation_plot(self)

    def plot_relearning(self) -> bytes | None:
        """PNG of the forget metric along relearning, one line per attack run; None without relearning."""
        return relearning_plot(self)
