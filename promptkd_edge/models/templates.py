"""The text template of zero-shot class vectors. Torch-free: the training configs and the CLI read it."""

DEFAULT_TEMPLATE = "a photo of a {}."
