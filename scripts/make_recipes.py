"""Write the paper-setting recipes under recipes/tofu, recipes/muse and recipes/wmdp (self-launching YAML).

    python scripts/make_recipes.py           # (re)write them
    python scripts/make_recipes.py --check   # exit 1 if a committed recipe differs from what this script writes

The grid: TOFU forget01/05/10 x {npo, grad_diff, simnpo} x {adamw, signadam, adazo, hybrid}; TOFU
forget01/05/10 x {undial, ce_u, satimp, wga} x {adamw, hybrid}; TOFU forget10 with AdamW for pdu, idk_nll and
altpo; MUSE news/books NPO and WMDP RMU, each with AdamW and the FO-ZO hybrid. Every file says where its numbers
come from; tests check that the committed files equal this script's output, so edit here, not there.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from hf_unlearn.launch import LAUNCH_LINE


ROOT = Path(__file__).resolve().parents[1]

TOFU_MODEL = "open-unlearning/tofu_Llama-2-7b-chat-hf_full"
# (forget examples, hybrid N, max_steps): ~10 epochs at effective batch 32, rounded to whole hybrid periods (2N)
# so that every optimizer of a split trains the same number of steps and the hybrid ends on a ZO phase.
TOFU_SPLITS = {"forget01": (40, 3, 12), "forget05": (200, 10, 60), "forget10": (400, 20, 120)}

METHODS = {
    "npo": (
        "NPO (Zhang et al. 2024): beta 0.1 on TOFU, retain NLL weight 1 (docs/definitions.md)",
        {"beta": 0.1, "alpha": 1.0, "retain_loss": "nll", "ref_log_probs": "cached"},
    ),
    "grad_diff": (
        "GradDiff: forget CE ascent + retain NLL, both weight 1 (TOFU / open-unlearning default)",
        {"gamma": 1.0, "alpha": 1.0, "retain_loss": "nll"},
    ),
    "simnpo": (
        "SimNPO (Fan et al. 2024): beta 2.5, margin 0, the low end of the paper's ranges beta 2.5-4.5, gamma 0-0.125",
        {"beta": 2.5, "margin": 0.0, "alpha": 1.0, "retain_loss": "nll"},
    ),
}

# Methods outside the paper's grid, each with its own published setting, run with AdamW and the hybrid.
OTHER_METHODS = {
    "undial": (
        "UNDIAL (Dong et al. 2024): beta 10, no retain term (open-unlearning configs/trainer/UNDIAL.yaml, which "
        "trains at lr 1e-4; here the grid's shared lr, so methods compare at one setting)",
        {"beta": 10.0, "alpha": 0.0},
    ),
    "ce_u": (
        "CE-U (Yang 2025): the first answer token ignored, no retain term (open-unlearning "
        "src/trainer/unlearn/ceu.py)",
        {"ignore_first_n_answer_tokens": 1, "alpha": 0.0},
    ),
    "satimp": (
        "SatImp (Yang et al. 2025): beta1 5, beta2 1, forget weight 1, retain NLL weight 0.1 (the authors' code, "
        "tmlr-group/SatImp, satimp_gd with coeff 0.1)",
        {"beta1": 5.0, "beta2": 1.0, "gamma": 1.0, "alpha": 0.1, "retain_loss": "nll"},
    ),
    "wga": (
        "WGA (Wang et al. 2025): beta 1, retain NLL weight 1 (open-unlearning configs/trainer/WGA.yaml)",
        {"beta": 1.0, "gamma": 1.0, "alpha": 1.0, "retain_loss": "nll"},
    ),
}
OTHER_OPTIMIZERS = ("adamw", "hybrid")

# Methods with one TOFU forget10 + AdamW recipe each (source, method fields, extra usage lines before the run).
SINGLE_METHODS = {
    "pdu": (
        "PDU (Entesari et al. 2025; open-unlearning's pdu.py): lambda starts at alpha 1 and follows "
        "lambda <- max(0, lambda + eta (retain NLL - eps)) after every step, eta 1 (open-unlearning's dual step). "
        "eps has no published default: 0.2 here is a bound above a memorising model's retain NLL; set it to your "
        "model's retain answer NLL plus the margin you accept",
        {"alpha": 1.0, "retain_loss_eps": 0.2, "dual_step_size": 1.0, "dual_update": "step"},
        [],
    ),
    "idk_nll": (
        "IdkNLL (TOFU's IDK baseline, Maini et al. 2024): NLL of a refusal drawn per example from hf_unlearn's own "
        "list in place of the forget answer, retain NLL weight 1",
        {"gamma": 1.0, "alpha": 1.0, "retain_loss": "nll"},
        [],
    ),
    "altpo": (
        "AltPO (Mekala et al. 2024): DPO with the model's own alternate answers preferred over the forget answers, "
        "beta 0.1 and retain NLL weight 1 (the middle and low end of open-unlearning's AltPO grid, beta 0.05-0.5, "
        "alpha 1-5)",
        {"beta": 0.1, "alpha": 1.0, "retain_loss": "nll", "alternates_file": "outputs/tofu/forget10_alternates.jsonl"},
        [
            "hf-unlearn alternates --model path/to/tofu_model --data_dir path/to/tofu --forget_split forget10 \\",
            "    --output outputs/tofu/forget10_alternates.jsonl",
        ],
    ),
}

# The ZO settings the paper leaves open (Downgrade to Upgrade, arXiv 2510.00761, does not state them): mu 1e-3 per
# weight, one sphere direction, AdaZO betas (0.9, 0.999) with Adam-style bias correction and an lr 10x below the FO lr.
ZO_FIELDS = {
    "zo_mu": 1.0e-3,
    "zo_num_directions": 1,
    "zo_direction": "sphere",
    "zo_bias_correction": True,
}

OPTIMIZERS = {
    "adamw": ("AdamW, the first-order baseline", {"optimizer": "adamw", "learning_rate": 1.0e-5}),
    "signadam": (
        "signAdam (sign of Adam's momentum, the paper's 1-bit compressed first-order grade); same lr as AdamW: both "
        "move a weight by about lr per step",
        {"optimizer": "signadam", "learning_rate": 1.0e-5},
    ),
    "adazo": (
        "AdaZO (R-AdaZO, Shu et al. 2025), the paper's zeroth-order optimizer, at the hybrid's ZO settings",
        {"optimizer": "adazo", "learning_rate": 1.0e-6, **ZO_FIELDS},
    ),
    "hybrid": (
        "the FO-ZO hybrid (Downgrade to Upgrade, ICLR 2026): N AdamW steps, then N AdaZO steps, alternating, "
        "ending on ZO",
        {
            "optimizer": "hybrid",
            "hybrid_fo_optimizer": "adamw",
            "hybrid_zo_optimizer": "adazo",
            "learning_rate": 1.0e-5,
            "zo_learning_rate": 1.0e-6,
            **ZO_FIELDS,
        },
    ),
}

RUN_FIELDS = {"seed": 42, "logging_steps": 5, "save_strategy": "no", "report_to": "none"}
# The hand-written twins' precision (recipes/tofu_npo_*.yaml, muse_news_npo_hybrid.yaml, wmdp_rmu_hybrid.yaml): bf16
# weights and compute over DeepSpeed's fp32 master partitions (ZeRO-2/3), whose masters ZO steps update, or bf16
# autocast over fp32 weights without DeepSpeed. Every optimizer of a grid shares it.
PRECISION = {"bf16": True}


def yaml_value(value) -> str:
    """A value written so YAML and Python both read it: strings quoted unless a plain identifier."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value and (abs(value) < 1e-2 or abs(value) >= 1e4):
            mantissa, exponent = f"{value:.1e}".split("e")
            return f"{mantissa}e{int(exponent):+d}"  # YAML 1.1 reads 1e-5 as a string: it needs the dot and sign
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    text = str(value)
    plain = text.isidentifier() and text not in ("no", "yes", "on", "off", "null", "true", "false")
    return text if plain else f'"{text}"'


def render(prose: list[str], usage: list[str], sections: list[dict]) -> str:
    lines = ["# " + line for line in textwrap.wrap(" ".join(prose), width=115)]
    lines += ["#   " + line for line in usage]
    lines.append(LAUNCH_LINE)
    for i, section in enumerate(sections):
        if i:
            lines.append("")
        lines += [f"{key}: {yaml_value(value)}" for key, value in section.items()]
    return "\n".join(lines) + "\n"


def tofu_recipes() -> dict[str, str]:
    files = {}
    for split, (examples, n, steps) in TOFU_SPLITS.items():
        warmup = max(1, round(examples / 32))
        grid = [(method, entry, list(OPTIMIZERS)) for method, entry in METHODS.items()]
        grid += [(method, entry, list(OTHER_OPTIMIZERS)) for method, entry in OTHER_METHODS.items()]
        for method, (method_source, method_fields), optimizers in grid:
            for name in optimizers:
                optimizer_source, optimizer_fields = OPTIMIZERS[name]
                path = f"recipes/tofu/{split}_{method}_{name}.yaml"
                schedule = {"hybrid_fo_steps": n} if name == "hybrid" else {}
                header = [
                    f"TOFU {split} ({examples} forget QA pairs), {method}, {optimizer_source}.",
                    f"Method: {method_source}.",
                    "Training: TOFU's defaults (Maini et al. 2024): lr 1e-5, effective batch 32,",
                    f"weight decay 0.01, warm-up 1 epoch; {steps} steps = about 10 epochs, a multiple of the hybrid "
                    f"period 2N = {2 * n}.",
                    "Forget quality needs TOFU's retain model: add --evaluate true --retain_model <model>.",
                    "Generated by scripts/make_recipes.py (edit the script, not this file). Point the model and data",
                    "at local copies to run offline:",
                ]
                usage = [
                    "accelerate launch --config_file recipes/accelerate_configs/zero2.yaml \\",
                    f"    {path} --model_name_or_path path/to/tofu_model --data_dir path/to/tofu",
                ]
                sections = [
                    {"method": method, "model_name_or_path": TOFU_MODEL, "data_source": "tofu", "forget_split": split,
                     "max_length": 512},
                    method_fields,
                    {**optimizer_fields, **schedule, "max_steps": steps, "per_device_train_batch_size": 4,
                     "gradient_accumulation_steps": 8, "weight_decay": 0.01, "warmup_steps": warmup, **PRECISION},
                    {"output_dir": f"outputs/tofu/{split}_{method}_{name}", **RUN_FIELDS},
                ]  # fmt: skip
                files[path] = render(header, usage, sections)
    return files


def single_method_recipes() -> dict[str, str]:
    """forget10 + AdamW for each of SINGLE_METHODS, at the grid's training settings."""
    files = {}
    examples, _, steps = TOFU_SPLITS["forget10"]
    optimizer_source, optimizer_fields = OPTIMIZERS["adamw"]
    for method, (method_source, method_fields, before) in SINGLE_METHODS.items():
        path = f"recipes/tofu/forget10_{method}_adamw.yaml"
        header = [
            f"TOFU forget10 ({examples} forget QA pairs), {method}, {optimizer_source}.",
            f"Method: {method_source}.",
            "Training: the TOFU / open-unlearning defaults of the grid above: lr 1e-5, effective batch 32,",
            f"weight decay 0.01, warm-up 1 epoch; {steps} steps = about 10 epochs.",
            "Generated by scripts/make_recipes.py (edit the script, not this file). Point the model and data",
            "at local copies to run offline:",
        ]
        usage = [
            *before,
            "accelerate launch --config_file recipes/accelerate_configs/zero2.yaml \\",
            f"    {path} --model_name_or_path path/to/tofu_model --data_dir path/to/tofu",
        ]
        sections = [
            {"method": method, "model_name_or_path": TOFU_MODEL, "data_source": "tofu", "forget_split": "forget10",
             "max_length": 512},
            method_fields,
            {**optimizer_fields, "max_steps": steps, "per_device_train_batch_size": 4,
             "gradient_accumulation_steps": 8, "weight_decay": 0.01, "warmup_steps": round(examples / 32),
             **PRECISION},
            {"output_dir": f"outputs/tofu/forget10_{method}_adamw", **RUN_FIELDS},
        ]  # fmt: skip
        files[path] = render(header, usage, sections)
    return files


def muse_recipes() -> dict[str, str]:
    files = {}
    for corpus in ("news", "books"):
        for name in ("adamw", "hybrid"):
            path = f"recipes/muse/{corpus}_npo_{name}.yaml"
            optimizer_source, optimizer_fields = OPTIMIZERS[name]
            schedule = {"hybrid_fo_steps": 20} if name == "hybrid" else {}
            header = [
                f"MUSE-{corpus.capitalize()} with NPO and {optimizer_source}.",
                "MUSE's NPO setting (Shi et al. 2024, arXiv 2407.06460): beta 0.1, lr 1e-5, effective",
                "batch 32, raw forget text in 2048-token blocks, retain NLL weight 1; 120 steps = 3 hybrid periods of",
                "the paper's N = 20, the same for both optimizers.",
                "Data: JSON Lines files with a 'text' field (MUSE's raw forget and retain corpora). Evaluate and",
                f"attack afterwards: hf-unlearn eval --benchmark muse, hf-unlearn attack (preset muse-{corpus}).",
                "Generated by scripts/make_recipes.py (edit the script, not this file).",
            ]
            usage = [
                "accelerate launch --config_file recipes/accelerate_configs/zero2.yaml \\",
                f"    {path} --forget_file {corpus}_forget.jsonl --retain_file {corpus}_retain.jsonl",
            ]
            sections = [
                {"method": "npo", "model_name_or_path": f"muse-bench/MUSE-{corpus}_target", "data_source": "muse",
                 "forget_file": f"data/muse/{corpus}_forget.jsonl", "retain_file": f"data/muse/{corpus}_retain.jsonl",
                 "max_length": 2048},
                METHODS["npo"][1],
                {**optimizer_fields, **schedule, "max_steps": 120, "per_device_train_batch_size": 4,
                 "gradient_accumulation_steps": 8, "weight_decay": 0.01, **PRECISION},
                {"output_dir": f"outputs/muse/{corpus}_npo_{name}", **RUN_FIELDS},
            ]  # fmt: skip
            files[path] = render(header, usage, sections)
    return files


def wmdp_recipes() -> dict[str, str]:
    files = {}
    for name in ("adamw", "hybrid"):
        path = f"recipes/wmdp/bio_rmu_{name}.yaml"
        steps = 160 if name == "hybrid" else 150
        optimizer_fields = {"optimizer": "adamw", "learning_rate": 5.0e-5}
        if name == "hybrid":
            optimizer_fields = {**OPTIMIZERS["hybrid"][1], "learning_rate": 5.0e-5, "zo_learning_rate": 5.0e-6}
            optimizer_fields["hybrid_fo_steps"] = 20
            # RMU trains three matrices: restoring them exactly after the +-mu forwards costs one copy of those three.
            optimizer_fields["zo_exact_restore"] = True
        header = [
            f"WMDP-Bio with RMU (Li et al. 2024) and {OPTIMIZERS[name][0]}.",
            "The published Zephyr-7B setting (arXiv 2403.03218): layer 7 steered to c = 6.5, alpha = 1200,",
            "lr 5e-5, 150 batches of 4, only mlp.down_proj of layers 5-7 trained, 512-token forget text"
            + (" (hybrid: 160 steps = 4 periods of N = 20; ZO perturbs exactly the RMU-selected weights)." if name ==
               "hybrid" else "."),
            "Data: JSON Lines files with a 'text' field (cais/wmdp-corpora bio forget texts; wikitext for retain).",
            "Evaluate afterwards: hf-unlearn eval --benchmark wmdp.",
            "Generated by scripts/make_recipes.py (edit the script, not this file).",
        ]  # fmt: skip
        usage = [f"accelerate launch {path} --forget_file bio_forget.jsonl --retain_file wikitext.jsonl"]
        sections = [
            {"method": "rmu", "model_name_or_path": "HuggingFaceH4/zephyr-7b-beta", "data_source": "wmdp",
             "forget_file": "data/wmdp/bio_forget.jsonl", "retain_file": "data/wikitext/retain.jsonl",
             "max_length": 512},
            {"layer": 7, "steering_coeff": 6.5, "alpha": 1200, "trainable_layers": [5, 6, 7]},
            {**optimizer_fields, "max_steps": steps, "per_device_train_batch_size": 4, "lr_scheduler_type": "constant",
             **PRECISION},
            {"output_dir": f"outputs/wmdp/bio_rmu_{name}", **RUN_FIELDS},
        ]  # fmt: skip
        files[path] = render(header, usage, sections)
    return files


def all_recipes() -> dict[str, str]:
    """Repository-relative path -> file text of every generated recipe."""
    return {**tofu_recipes(), **single_method_recipes(), **muse_recipes(), **wmdp_recipes()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="Compare instead of writing; exit 1 on a difference.")
    args = parser.parse_args(argv)
    stale = []
    for relative, text in all_recipes().items():
        path = ROOT / relative
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print(f"{len(stale)} recipe(s) differ from scripts/make_recipes.py: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
