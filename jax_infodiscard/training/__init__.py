"""Training loops and orbax checkpoints for the model zoo."""

from jax_infodiscard.training.checkpoint import (
    CheckpointFallbackWarning,
    CorruptCheckpointError,
    all_steps,
    latest_step,
    read_metadata,
    restore_checkpoint,
    restore_extra,
    restore_newest_intact,
    save_checkpoint,
    verify_checkpoint,
)
from jax_infodiscard.training.train import (
    TrainConfig,
    augment_batch,
    evaluate,
    make_optimizer,
    train,
)

__all__ = [
    "CheckpointFallbackWarning",
    "CorruptCheckpointError",
    "TrainConfig",
    "all_steps",
    "augment_batch",
    "evaluate",
    "latest_step",
    "make_optimizer",
    "read_metadata",
    "restore_checkpoint",
    "restore_extra",
    "restore_newest_intact",
    "save_checkpoint",
    "train",
    "verify_checkpoint",
]
