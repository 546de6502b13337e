"""metallmix: zero-shot pretrained-model and hyperparameter selection (an open MetaLLMiX)."""

__version__ = "0.1.0"
