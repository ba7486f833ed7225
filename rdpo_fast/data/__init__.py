"""Preference data: records and batches with TRL's fields (records.py), the sources a run reads
(sources.py: JSONL, datasets, Hub), the shipped pairs (shipped.py, default_*.jsonl) and the task
templates of the self-critique chain with their prompt files (templates.py, prompt_files/)."""
# What the flat layout's rdpo_fast.data module exported, importable from here as before.
from .records import (
                      IGNORE,
                      OPTIONAL_FIELDS,
                      Batch,
                      DataError,
                      Pair,
                      PreferenceData,
                      collate,
                      epoch_order,
                      load_preference_data,
                      read_jsonl,
                      step_batches,
                      steps_per_epoch,
)

__all__ = ["Batch", "DataError", "IGNORE", "OPTIONAL_FIELDS", "Pair", "PreferenceData", "collate", "epoch_order",
           "load_preference_data", "read_jsonl", "step_batches", "steps_per_epoch"]
