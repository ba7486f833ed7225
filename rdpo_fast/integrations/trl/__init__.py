"""TRL's trainers on the fused loss: FusedDPOTrainer and the one-line patch_dpo_trainer() (dpo.py),
FusedCPOTrainer for SimPO / CPO (cpo.py, imported when asked for: it lives in trl.experimental), and what
both share (patching.py).

    from rdpo_fast.integrations.trl import patch_dpo_trainer   # pip install 'rdpo_fast[trl]'
    patch_dpo_trainer()
"""
from .dpo import (
    TESTED_TRL_VERSION,
    TRL_LOSS_TYPES,
    FusedDPOTrainer,
    check_training_args,
    is_patched,
    loss_options,
    patch_dpo_trainer,
    unpatch_dpo_trainer,
)
from .patching import UnsupportedSetting

__all__ = ["FusedCPOTrainer", "FusedDPOTrainer", "TESTED_TRL_VERSION", "TRL_LOSS_TYPES", "UnsupportedSetting",
           "check_training_args", "is_patched", "loss_options", "patch_dpo_trainer", "unpatch_dpo_trainer"]


def __getattr__(name):
    if name == "FusedCPOTrainer":
        from .cpo import FusedCPOTrainer

        return FusedCPOTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
