"""hf_unlearn: robust LLM unlearning on the Hugging Face stack."""

__version__ = "0.1.0.dev0"
