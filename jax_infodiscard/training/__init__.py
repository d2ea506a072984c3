"""Training loops and orbax checkpoints for the model zoo."""

from jax_infodiscard.training.checkpoint import (
    all_steps,
    latest_step,
    read_metadata,
    restore_checkpoint,
    restore_extra,
    save_checkpoint,
)
from jax_infodiscard.training.train import (
    TrainConfig,
    augment_batch,
    evaluate,
    make_optimizer,
    train,
)

__all__ = [
    "TrainConfig",
    "all_steps",
    "augment_batch",
    "evaluate",
    "latest_step",
    "make_optimizer",
    "read_metadata",
    "restore_checkpoint",
    "restore_extra",
    "save_checkpoint",
    "train",
]
