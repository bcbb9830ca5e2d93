"""hf_unlearn: robust LLM unlearning on the Hugging Face stack.

The public names below are imported on first use, so `import hf_unlearn` stays cheap (no torch, no transformers).
"""

import importlib


__version__ = "0.1.0.dev0"

_PUBLIC = {
    "hf_unlearn.data": ["DataCollatorForUnlearning", "ForgetRetainDataset", "QADataset", "TextBlockDataset"],
    "hf_unlearn.benchmarks.tofu_data": ["load_tofu"],
    "hf_unlearn.configs": ["UnlearnConfig"],
    "hf_unlearn.trainers": [
        "UnlearnTrainer", "get_method", "GradAscentConfig", "GradAscentTrainer", "GradDiffConfig", "GradDiffTrainer",
        "IdkDPOConfig", "IdkDPOTrainer", "NPOConfig", "NPOTrainer", "RMUConfig", "RMUTrainer", "SimNPOConfig",
        "SimNPOTrainer", "UNDIALConfig", "UNDIALTrainer", "CEUConfig", "CEUTrainer", "SatImpConfig", "SatImpTrainer",
        "WGAConfig", "WGATrainer",
        "SimNPOTrainer", "PDUConfig", "PDUTrainer", "IdkNLLConfig", "IdkNLLTrainer", "AltPOConfig", "AltPOTrainer",
    ],
    "hf_unlearn.trainers.zeroth_order": ["ZerothOrderMixin"],
    "hf_unlearn.optim": ["build_optimizer", "OptimizerArguments", "OptimizerConfig", "OptimizerFactoryMixin"],
    "hf_unlearn.trainers.callbacks": ["HybridScheduleCallback", "PairingEpochCallback"],
    "hf_unlearn.attacks.callback": ["RobustnessCallback"],
    "hf_unlearn.compute": ["ComputeAccountingCallback"],
    "hf_unlearn.report": ["UnlearnReport"],
    "hf_unlearn.model_card": ["build_model_card", "write_card"],
    "hf_unlearn.hub": ["push_to_hub", "check_push_possible"],
    "hf_unlearn.attacks": ["relearn", "quantize", "codes_changed_fraction"],
    "hf_unlearn.attacks.robustness": ["RobustnessConfig", "robustness_checks"],
    "hf_unlearn.benchmarks": ["evaluate_model"],
    "hf_unlearn.benchmarks.sources": ["DataSource"],
    "hf_unlearn.loading": ["load_model_and_tokenizer"],
    "hf_unlearn.recipes": ["parse_recipe", "Recipe"],
    "hf_unlearn.pipeline": ["run"],
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = ["__version__", *_MODULE_OF]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'hf_unlearn' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
