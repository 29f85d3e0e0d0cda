"""Learning-rate schedules, optimizers and losses (plain arguments, no config)."""
from .loss import create_loss
from .lr_schedule import create_lr_schedule, epochs_to_steps
from .optimizer import create_optimizer, weight_decay_groups

__all__ = ["create_loss", "create_lr_schedule", "epochs_to_steps", "create_optimizer", "weight_decay_groups"]
