"""The three pipelines built on the fused kernels (SPEC sections 1 and 5).

- rDPO synthesis (`synth.py`): a teacher answers, critiques and revises in one chat; the revision is
  chosen, the original rejected. External scorers (`scorers.py`: LLM judge, sequence-classification
  reward model, implicit reward) turn the pair into soft labels for `rdpo-fast train --loss-type rdpo`.
- DICE (`dice.py`): rounds of sampling K candidates, scoring them with the implicit reward of
  (policy, reference) through the forward-only fused op (`implicit.py`), length-debiased pairing and
  experience replay, then DPO with the previous policy as reference.
- Cross-lingual implicit rewarding (`crosslingual.py`): target-language responses scored under the
  English instruction with a language prefix, length-controlled pairs, DPO + NLL, iterated.

Long runs keep their state in a run directory whose stages are skipped on a rerun (`stages.py`).
The subcommands are listed in `cli.SUBCOMMANDS` and registered on the `rdpo-fast` CLI.
"""
