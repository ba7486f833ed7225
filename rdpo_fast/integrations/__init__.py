"""Integrations with other training libraries. Each lives in its own module and imports its library
only when imported itself: `from rdpo_fast.integrations.trl import FusedDPOTrainer` (rdpo_fast[trl])."""
