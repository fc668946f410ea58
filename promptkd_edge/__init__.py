"""promptkd-edge: PromptKD distillation of CLIP into a prompted student, shipped to the edge."""

__version__ = "0.1.0"
