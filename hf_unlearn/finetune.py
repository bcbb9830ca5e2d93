"""The starting point of an unlearning run, fine-tuned with TRL: the target model and the retain model.

TOFU's protocol fine-tunes one base model twice: on all of the benchmark's QA pairs (the *target*, which unlearning
then edits) and on everything but the forget split (the *retain* model, whose truth ratios forget quality compares
against). Both runs here use `trl.SFTTrainer` and its `trl.SFTConfig`; model loading and LoRA follow `trl.ModelConfig`.

The examples are tokenised by `hf_unlearn.data.QADataset`, the prompt/answer format that unlearning and evaluation
read, and reach SFTTrainer pre-tokenised (answer-only labels, dataset preparation skipped), so fine-tuning teaches
exactly the answers that are later forgotten and scored.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from hf_unlearn.data import QAFormat


FINETUNE_BENCHMARKS = ("tofu", "synthetic")
MODELS = ("target", "retain")


@dataclass
class FinetuneArguments:
    """What to fine-tune on; the model and LoRA come from `trl.ModelConfig`, the training from `trl.SFTConfig`."""

    data_source: str = field(
        default="tofu", metadata={"help": f"QA data to fine-tune on: {', '.join(FINETUNE_BENCHMARKS)}."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local folder of <config>.json JSON Lines files (TOFU layout); unset = the Hub (locuslab/TOFU). "
            "For data_source=synthetic the folder is written there (default: <output_dir>/data)."
        },
    )
    forget_split: str = field(
        default="forget10",
        metadata={"help": "The forget split the retain model must not see: it trains on the complement (retain90)."},
    )
    models: list[str] = field(
        default_factory=lambda: list(MODELS),
        metadata={
            "help": "Which models to fine-tune: target (on `full`, saved to <output_dir>/target) and/or retain "
            "(on the forget split's complement, saved to <output_dir>/retain)."
        },
    )
    qa_template: str | None = field(
        default=None,
        metadata={"help": "Plain prompt template with {question}; unset = the tokenizer's chat template if any."},
    )
    synthetic_num_authors: int = field(default=20, metadata={"help": "data_source=synthetic: number of authors."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into an output_dir that already holds files (refused otherwise, before any load)."},
    )

    def __post_init__(self):
        if self.data_source not in FINETUNE_BENCHMARKS:
            raise ValueError(
                f"data_source={self.data_source!r} has no QA data to fine-tune on; "
                f"choose {', '.join(FINETUNE_BENCHMARKS)}."
            )
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ValueError(f"models={self.models!r}: choose one or both of {', '.join(MODELS)}.")
        from hf_unlearn.benchmarks.tofu_data import tofu_split_names

        tofu_split_names(self.forget_split)  # a bad split name fails here, before any weight loads


def finetune_parser(**kwargs):
    """A `trl.TrlParser` over (FinetuneArguments, SFTConfig, ModelConfig), as TRL's own `sft` script builds it."""
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((FinetuneArguments, SFTConfig, ModelConfig), prog="hf-unlearn finetune", **kwargs)

    def one_line_error(message: str):
        # argparse would print the whole usage first; the command boundary prints this one line
        raise ValueError(f"{message}; `hf-unlearn finetune --help` lists the flags")

    parser.error = one_line_error
    return parser


def parse_finetune_args(argv: list[str] | None = None):
    """(FinetuneArguments, SFTConfig, ModelConfig) from TRL-style flags (`--config file.yaml` gives defaults).

    The output folder is checked here, before any weight loads: not a file, not the base model's or the data's own
    folder, and holding no other files unless overwrite_output_dir.
    """
    import os

    from hf_unlearn.io import check_output_dir

    try:
        script_args, config, model_args = finetune_parser().parse_args_and_config(args=argv)
    except ValueError as err:
        if "not used by the HfArgumentParser" in str(err):  # an unknown flag
            raise ValueError(f"{err}; `hf-unlearn finetune --help` lists the flags") from None
        raise
    from hf_unlearn.loading import check_model_path

    model_args.model_name_or_path = check_model_path(model_args.model_name_or_path, "model_name_or_path")
    protected = {"model_name_or_path": model_args.model_name_or_path}
    if script_args.data_source != "synthetic":
        protected["data_dir"] = script_args.data_dir
    check_output_dir(
        config.output_dir, overwrite=script_args.overwrite_output_dir, protected=protected,
        check_contents=int(os.environ.get("RANK", "0")) == 0,
    )  # fmt: skip
    return script_args, config, model_args


def training_split(model: str, forget_split: str) -> str:
    """The TOFU config a model fine-tunes on: `full` for the target, the forget split's complement for the retain."""
    from hf_unlearn.benchmarks.tofu_data import tofu_split_names

    return "full" if model == "target" else tofu_split_names(forget_split)["retain"]


def qa_sft_dataset(rows, tokenizer, max_length: int, qa_format: QAFormat | None, source: str):
    """A `datasets.Dataset` of `input_ids`/`attention_mask`/`labels` in hf_unlearn's prompt/answer format."""
    from datasets import Dataset

    from hf_unlearn.data import QADataset

    examples = QADataset(rows, tokenizer, max_length=max_length, qa_format=qa_format, source=source)
    return Dataset.from_list([examples[i] for i in range(len(examples))])


def load_model(model_args):
    """The causal LM named by a `trl.ModelConfig`, loaded as TRL's own scripts load it."""
    from hf_unlearn.loading import load_model as load

    return load(
        model_args.model_name_or_path, revision=model_args.model_revision, dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )  # fmt: skip


def finetune(script_args: FinetuneArguments, config, model_args) -> dict:
    """Fine-tune `model_args.model_name_or_path` with `trl.SFTTrainer` into `<config.output_dir>/<model>` per model.

    Args:
        script_args: the benchmark, forget split and which models to train.
        config: a `trl.SFTConfig` (its `max_length` caps each QA example; its `output_dir` holds the models).
        model_args: a `trl.ModelConfig` (model, dtype, `use_peft` / `lora_*`).

    Returns:
        `{"data_dir": ..., "<model>": {"path": ..., "split": ..., "train": metrics}}` for each model trained.
    """
    from transformers import AutoTokenizer
    from trl import SFTTrainer, get_peft_config

    from hf_unlearn.benchmarks.sources import SyntheticSource
    from hf_unlearn.benchmarks.tofu_data import load_tofu
    from hf_unlearn.pipeline import prepare_source

    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required: the base model to fine-tune (a local folder or a Hub id).")
    if config.max_length is None:
        raise ValueError("max_length must be set: it caps each tokenised QA example (e.g. --max_length 512).")
    peft_config = get_peft_config(model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    data_dir = script_args.data_dir
    if script_args.data_source == "synthetic":
        data_dir = data_dir or str(Path(config.output_dir) / "data")
        prepare_source(SyntheticSource(data_dir, num_authors=script_args.synthetic_num_authors, seed=config.seed))
    summary: dict = {"data_dir": data_dir}
    for model in script_args.models:
        split = training_split(model, script_args.forget_split)
        source = f"{data_dir or 'locuslab/TOFU'}:{split}"
        dataset = qa_sft_dataset(
            load_tofu(split, data_dir), tokenizer, config.max_length, QAFormat.from_args(script_args), source
        )
        args = copy.copy(config)
        args.output_dir = str(Path(config.output_dir) / model)
        # The examples are tokenised already (hf_unlearn's format, answer-only labels): SFTTrainer must not re-format.
        args.dataset_kwargs = {**(config.dataset_kwargs or {}), "skip_prepare_dataset": True}
        trainer = SFTTrainer(
            model=load_model(model_args), args=args, train_dataset=dataset, processing_class=tokenizer,
            peft_config=peft_config,
        )  # fmt: skip
        result = trainer.train()
        trainer.save_model(args.output_dir)
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(args.output_dir)
        summary[model] = {"path": args.output_dir, "split": split, "train": result.metrics}
    return summary
