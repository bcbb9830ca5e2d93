"""The sweep's controls, evaluated once and not attacked: the model before unlearning, the retain model (when the
recipe names one) and, per zeroth-order or hybrid run, Gaussian noise matched tensor by tensor to its weight change.
Each is cached in ``<output_dir>/controls/<name>.json``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from hf_unlearn.io import atomic_write_json

from .plan import Cell
from .schema import ControlRow


CONTROLS_DIR = "controls"


def load_model(path: Path | str):
    """An fp32 model on the CPU, in eval mode (a checkpoint, a control or a run's final model)."""
    from hf_unlearn.loading import load_model as load

    return load(Path(path), dtype="float32").eval()


def noise_control(original: Path | str, unlearned: Path | str, output_dir: Path | str, seed: int) -> Path:
    """The original model plus Gaussian noise whose norm equals unlearning's change, tensor by tensor."""
    import torch

    from hf_unlearn.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(original, "cpu")
    moved = load_model(unlearned).state_dict()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            noise = torch.randn(weight.shape, generator=generator)
            weight.add_(noise * ((moved[name] - weight).norm() / noise.norm()))
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return Path(output_dir)


def control_rows(output_dir: Path | str, base, cells: list[Cell], evaluator, kinds: list[str]) -> list[ControlRow]:
    """The original model, the retain model (when the recipe names one) and noise matched to each ZO/hybrid run;
    `kinds` are the 4-bit quantizations whose changed codes a noise control reports."""
    from hf_unlearn.attacks.quantize import codes_changed_fraction

    folder = Path(output_dir) / CONTROLS_DIR

    def cached(name: str, compute: Callable[[], ControlRow]) -> ControlRow:
        path = folder / f"{name}.json"
        if path.is_file():
            return ControlRow.from_dict(json.loads(path.read_text()))
        row = compute()
        atomic_write_json(path, row.to_dict())
        return row

    original_path = base.script.model_name_or_path
    rows = [cached("original", lambda: ControlRow("original", "original", path=original_path,
                                                  metrics=evaluator.evaluate(evaluator.original)))]  # fmt: skip
    if base.script.retain_model:
        path = base.script.retain_model
        rows.append(cached("retain", lambda: ControlRow("retain", "retain", path=path,
                                                        metrics=evaluator.evaluate(load_model(path)))))  # fmt: skip
    for cell in cells:
        if not cell.optimizer.zeroth_order:
            continue
        name = f"noise_{cell.optimizer.slug}_seed{cell.seed}"

        def noise(cell=cell, name=name) -> ControlRow:
            path = noise_control(original_path, cell.output_dir, folder / name, seed=cell.seed)
            model = load_model(path)
            codes = {k: codes_changed_fraction(evaluator.original, model, k)["fraction"] for k in kinds}
            shutil.rmtree(path)  # the numbers are kept; the weights are re-made from the seed on demand
            return ControlRow(f"noise ~ {cell.optimizer.label}", "noise", of=cell.optimizer.spec, seed=cell.seed,
                              metrics=evaluator.evaluate(model), codes_changed=codes)  # fmt: skip

        rows.append(cached(name, noise))
    return rows
