"""Training: the distillation recipe and the small pieces it calls (loss, schedule, cache, DDP, checkpoints)."""
