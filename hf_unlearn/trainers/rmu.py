"""RMU (Li et al. 2024, WMDP): steer layer-ℓ activations on forget text to a fixed random direction, keep retain
activations equal to the frozen model's, training only a few selected weights."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from hf_unlearn.configs import UnlearnConfig, check_positive
from hf_unlearn.modeling import model_inputs
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer, is_peft_model


DEFAULT_TRAINABLE_PATTERN = r"mlp\.(down_proj|c_proj)\.weight$"


@dataclass
class RMUConfig(UnlearnConfig):
    """RMU hyperparameters; defaults are the published Zephyr-7B run (ℓ = 7, c = 6.5, α = 1200, layers 5–7)."""

    alpha: float = field(default=1200.0, metadata={"help": "Weight of the retain activation-matching MSE."})
    layer: int = field(default=7, metadata={"help": "Decoder layer ℓ whose output activations are steered (0-based)."})
    steering_coeff: float = field(default=6.5, metadata={"help": "Scale c of the random steering vector c·u."})
    trainable_layers: list[int] = field(
        default_factory=lambda: [5, 6, 7],
        metadata={"help": "Decoder layers whose parameters matching trainable_pattern are updated (each ≤ layer)."},
    )
    trainable_pattern: str = field(
        default=DEFAULT_TRAINABLE_PATTERN,
        metadata={
            "help": "Regex searched in parameter names inside each trainable layer (e.g. 'mlp.down_proj.weight'); "
            "everything else is frozen. Under peft the adapter's target_modules decide instead."
        },
    )

    def __post_init__(self):
        check_positive("steering_coeff", self.steering_coeff)
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}.")
        if not self.trainable_layers:
            raise ValueError("trainable_layers must name at least one decoder layer, e.g. [5, 6, 7].")
        if max(self.trainable_layers) > self.layer or min(self.trainable_layers) < 0:
            raise ValueError(
                f"trainable_layers must lie in 0..layer={self.layer} (later layers get no gradient), "
                f"got {self.trainable_layers}."
            )
        if self.retain_loss != "nll":
            raise ValueError("retain_loss must be 'nll' for rmu: its retain term is always activation matching.")
        try:
            re.compile(self.trainable_pattern)
        except re.error as err:
            raise ValueError(f"trainable_pattern {self.trainable_pattern!r} is not a valid regex: {err}.") from err
        super().__post_init__()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of any causal LM: the first ModuleList as long as `config.num_hidden_layers`."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"Cannot find the {count} decoder layers of {type(model).__name__}.")


def select_trainable(layers: nn.ModuleList, layer_ids: list[int], pattern: str) -> list[nn.Parameter]:
    """Parameters of the chosen layers whose in-layer name matches `pattern`; error when none does."""
    regex = re.compile(pattern)
    chosen = [p for i in layer_ids for name, p in layers[i].named_parameters() if regex.search(name)]
    if not chosen:
        names = sorted({name for name, _ in layers[layer_ids[0]].named_parameters()})
        raise ValueError(f"trainable_pattern {pattern!r} matches no parameter of layers {layer_ids}; names: {names}.")
    return chosen


@contextlib.contextmanager
def captured_output(module: nn.Module) -> Iterator[dict]:
    """Record `module`'s output hidden states (first element when it returns a tuple) during the block."""
    store: dict = {}

    def hook(_module, _inputs, output):
        store["hidden"] = output[0] if isinstance(output, tuple) else output

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


class RMUTrainer(UnlearnTrainer):
    """Loss = γ·MSE(h_θ(x_f), c·u) + α·MSE(h_θ(x_r), h_frozen(x_r)) at the output of decoder layer ℓ.

    MSEs average over non-padding positions and hidden units; u is uniform [0, 1) normalised, drawn once from
    `args.seed`. Only parameters selected by `trainable_layers` and `trainable_pattern` are updated.
    """

    _name = "rmu"
    _paper = Paper(
        title="The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning",
        authors="Li, Nathaniel and others",
        year=2024,
        arxiv="2403.03218",
        key="li2024wmdp",
    )
    config_class = RMUConfig

    @classmethod
    def needs_reference(cls, args) -> bool:
        return cls.uses_retain(args)

    @classmethod
    def check_model_config(cls, config, args) -> None:
        count = config.num_hidden_layers
        if args.layer >= count:
            raise ValueError(
                f"layer={args.layer} is out of range: the model has {count} decoder layers (0..{count - 1})."
            )
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        with torch.device("meta"):
            # The class itself, not AutoModelForCausalLM.from_config: under ZeRO-3 that would run zero.Init and
            # initialise this shape-only skeleton's weights, which meta tensors cannot hold.
            skeleton = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
        select_trainable(decoder_layers(skeleton), args.trainable_layers, args.trainable_pattern)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        base = self.accelerator.unwrap_model(self.model)
        self.steered_layer = decoder_layers(base)[self.args.layer]
        if not is_peft_model(base):
            chosen = {
                id(p)
                for p in select_trainable(
                    decoder_layers(base), self.args.trainable_layers, self.args.trainable_pattern
                )
            }
            for param in base.parameters():
                param.requires_grad_(id(param) in chosen)
        if self.ref_model is not None:
            self.frozen_layer = decoder_layers(self.accelerator.unwrap_model(self.ref_model))[self.args.layer]
        else:
            self.frozen_layer = self.steered_layer  # under peft the frozen model is this one with the adapter off
        hidden = base.config.hidden_size
        generator = torch.Generator().manual_seed(self.args.seed)
        direction = torch.rand(hidden, generator=generator)
        self.steering = (self.args.steering_coeff * direction / direction.norm()).to(self.args.device)

    def layer_output(self, model, layer: nn.Module, batch) -> torch.Tensor:
        with captured_output(layer) as store:
            model(**model_inputs(batch))
        return store["hidden"].float()

    def forget_loss(self, model, forget, counts):
        hidden = self.layer_output(model, self.steered_layer, forget)
        return masked_sq_error(hidden, self.steering, forget["attention_mask"]) / (counts.positions * hidden.shape[-1])

    def retain_loss(self, model, retain, counts):
        hidden = self.layer_output(model, self.steered_layer, retain)
        with torch.no_grad(), self.reference(model) as ref:
            target = self.layer_output(ref, self.frozen_layer, retain)
        return masked_sq_error(hidden, target, retain["attention_mask"]) / (counts.positions * hidden.shape[-1])


def masked_sq_error(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed squared error over the non-padding positions of `mask` (all hidden units)."""
    return (((hidden - target) ** 2).sum(-1) * mask).sum()
