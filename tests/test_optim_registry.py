"""The optimizer registry: one entry per optimizer, read by the factory, the config gate, the sweep, the card and
``--help``. Adding an optimizer is one entry (and its class): shown with SGD with Nesterov momentum, registered here
only (``sgd_nesterov``), which then runs through every reader without touching a library file."""

import math

import pytest
import torch
from torch import nn

from hf_unlearn.optim import HybridOptimizer, build_optimizer, validate_optimizer_args
from hf_unlearn.optim.registry import (
    KNOWN_OPTIMIZERS,
    OPTIMIZERS,
    Family,
    OptimizerEntry,
    optimizer_entry,
    register_optimizer,
)
from hf_unlearn.sweep import OptimizerSpec


def _nesterov(groups, cfg):
    return torch.optim.SGD(
        groups, lr=cfg.learning_rate, momentum=cfg.sgd_momentum, nesterov=True, weight_decay=cfg.weight_decay
    )


def _check_nesterov(cfg):
    # Only when chosen: plain SGD may run without momentum, Nesterov may not (torch would refuse it at build time,
    # after the weights are loaded).
    if cfg.optimizer == "sgd_nesterov" and not cfg.sgd_momentum > 0:
        raise ValueError("optimizer='sgd_nesterov' needs sgd_momentum > 0 (e.g. 0.9)")


NESTEROV = OptimizerEntry(
    name="sgd_nesterov", family=Family.FIRST_ORDER, grade=1.5, label="SGD (Nesterov)", build=_nesterov,
    summary="SGD with Nesterov momentum", fields=("sgd_momentum",), check=_check_nesterov,
)  # fmt: skip


@pytest.fixture
def nesterov(monkeypatch):
    """The entry, registered for one test (the registry is restored afterwards)."""
    monkeypatch.setitem(OPTIMIZERS, NESTEROV.name, NESTEROV)
    return NESTEROV


def test_the_factory_builds_a_test_registered_optimizer_and_it_steps_by_hand(nesterov):
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = build_optimizer([p], optimizer="sgd_nesterov", learning_rate=0.1, sgd_momentum=0.9)
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["nesterov"] is True
    # Nesterov with a constant gradient 1: b1 = 1, update g + 0.9 b1 = 1.9; b2 = 0.9 + 1 = 1.9, update 1 + 0.9*1.9
    for expected in (-0.1 * 1.9, -0.1 * 1.9 - 0.1 * 2.71):
        p.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(p.data, torch.full((3,), expected, dtype=torch.float64))


def test_the_config_gate_reads_the_registry_for_a_test_registered_optimizer(nesterov, tmp_path):
    from transformers import HfArgumentParser

    from hf_unlearn.trainers.npo import NPOConfig

    assert "sgd_nesterov" in KNOWN_OPTIMIZERS
    assert validate_optimizer_args(optimizer="sgd_nesterov", sgd_momentum=0.9).optimizer == "sgd_nesterov"
    with pytest.raises(ValueError, match=r"^optimizer='sgd_nesterov' needs sgd_momentum > 0 \(e.g. 0.9\)$"):
        validate_optimizer_args(optimizer="sgd_nesterov")  # its own check, before any weight is loaded
    validate_optimizer_args(optimizer="adamw")  # the check holds only where it is chosen
    # As the hybrid's first-order half (its family allows it) ...
    hybrid = build_optimizer([nn.Parameter(torch.zeros(2))], optimizer="hybrid", hybrid_fo_optimizer="sgd_nesterov",
                             sgd_momentum=0.9, learning_rate=0.1)  # fmt: skip
    assert isinstance(hybrid, HybridOptimizer) and hybrid.fo.param_groups[0]["nesterov"] is True
    # ... but not as its zeroth-order one.
    with pytest.raises(ValueError, match="hybrid_zo_optimizer='sgd_nesterov': choose one of zo_sgd, zo_adam, adazo"):
        validate_optimizer_args(optimizer="hybrid", hybrid_zo_optimizer="sgd_nesterov")
    # The recipe/CLI parser: the choices and --help are the registry's.
    parser = HfArgumentParser(NPOConfig)
    base = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none"]
    (config,) = parser.parse_args_into_dataclasses([*base, "--optimizer", "sgd_nesterov", "--sgd_momentum", "0.9"])
    assert config.optimizer == "sgd_nesterov" and config.optimizer_fields_checked
    assert "sgd_nesterov" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses([*base, "--optimizer", "lion"])


def test_the_sweep_orders_and_labels_a_test_registered_optimizer(nesterov):
    from hf_unlearn.sweep.schema import CellRecord, Column, RelearnValue
    from hf_unlearn.sweep.stats import summarise

    specs = [OptimizerSpec.parse(s) for s in ("hybrid", "qadam:8", "sgd_nesterov", "adamw", "sophia")]
    assert [s.label for s in sorted(specs, key=lambda s: s.grade)] == [
        "Sophia", "AdamW", "SGD (Nesterov)", "Q(m;8)", "hybrid FO-ZO"
    ]  # fmt: skip
    assert OptimizerSpec.parse("sgd_nesterov").flags() == ["--optimizer", "sgd_nesterov"]
    assert not OptimizerSpec.parse("sgd_nesterov").zeroth_order  # no matched-noise control

    def cell(spec, seed, value):
        return CellRecord(optimizer=spec.spec, label=spec.label, grade=spec.grade, seed=seed, output_dir="x",
                          global_step=2, unlearned={"forget_prob": value}, relearn=[RelearnValue(0, value)],
                          quantized={}, codes_changed={}, compute={})  # fmt: skip

    hybrid, nest, adamw = OptimizerSpec.parse("hybrid"), OptimizerSpec.parse("sgd_nesterov"), specs[3]
    cells = [cell(hybrid, 0, 0.5), cell(nest, 0, 0.2), cell(nest, 1, 0.4), cell(adamw, 0, 0.1)]
    rows = summarise(cells, [Column("unlearned/forget_prob", "forget_prob")], None, "forget_prob")
    assert [r.label for r in rows] == ["AdamW", "SGD (Nesterov)", "hybrid FO-ZO"]
    stat = rows[1].columns["unlearned/forget_prob"]
    assert (stat.mean, stat.n) == (pytest.approx(0.3), 2) and stat.std == pytest.approx(math.sqrt(0.02))


def test_the_card_words_a_test_registered_optimizer_from_its_entry(nesterov):
    from hf_unlearn.model_card import card_body
    from hf_unlearn.report import UnlearnReport

    body = card_body(UnlearnReport(method="npo", optimizer="sgd_nesterov"))
    assert "the **SGD (Nesterov)** (`sgd_nesterov`, first-order) optimizer" in body
    assert "First-order (sgd_nesterov)." in body  # the schedule paragraph, from its family
    qadam = card_body(UnlearnReport(method="npo", optimizer="qadam", config={"qadam_bits": 4}))
    assert "the **Q(m;4)** (`qadam`, sign/quantized) optimizer" in qadam


def test_every_entry_has_what_the_sweep_needs_and_grades_follow_the_paper():
    """Sophia -> AdamW (and SAM, FO-RS, SGD) -> Q(m;8) .. Q(m;1) -> signAdam -> ZO -> hybrid (Downgrade to Upgrade)."""
    assert list(KNOWN_OPTIMIZERS) == list(OPTIMIZERS)
    for name, entry in OPTIMIZERS.items():
        spec = OptimizerSpec.parse(f"{name}:4" if entry.variant else name)
        assert spec.label and math.isfinite(spec.grade)
    grade = {name: OptimizerSpec.parse(name).grade for name in OPTIMIZERS if not OPTIMIZERS[name].variant}
    q = [OptimizerSpec.parse(f"qadam:{bits}").grade for bits in range(8, 0, -1)]
    zo = [grade[n] for n, e in OPTIMIZERS.items() if e.family is Family.ZEROTH_ORDER]
    near_adamw = [grade[n] for n in ("adamw", "adamw_8bit", "sam", "fo_rs", "sgd")]
    assert grade["sophia"] < min(near_adamw) and max(near_adamw) < q[0]
    assert q == sorted(q) and q[-1] < grade["signadam"] < min(zo) and max(zo) < grade["hybrid"]


def test_an_entry_without_a_grade_or_label_is_refused_where_it_is_written():
    with pytest.raises(TypeError, match="grade"):
        OptimizerEntry(name="lion", family=Family.FIRST_ORDER, label="Lion", build=_nesterov)
    with pytest.raises(ValueError, match=r"^optimizer 'lion': grade None must be a finite number"):
        OptimizerEntry(name="lion", family=Family.FIRST_ORDER, grade=None, label="Lion", build=_nesterov)
    with pytest.raises(ValueError, match="give it a label"):
        OptimizerEntry(name="lion", family=Family.FIRST_ORDER, grade=1.6, label=" ", build=_nesterov)
    with pytest.raises(ValueError, match="family 'first-order' must be one of Family.SECOND_ORDER"):
        OptimizerEntry(name="lion", family="first-order", grade=1.6, label="Lion", build=_nesterov)
    with pytest.raises(ValueError, match="'adamw' is already registered"):
        register_optimizer(optimizer_entry("adamw"))
