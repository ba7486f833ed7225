"""The three pipelines built on the fused kernels (SPEC sections 1 and 5).

- rDPO (`rdpo_chain.py`, `rdpo-fast rdpo`): a teacher answers, critiques and revises in one chat
  (`synth.py`); the revision is chosen, the original rejected. External scorers (`scorers.py`: LLM
  judge with the task's scale, `judge_scales.py`; sequence-classification reward model; implicit
  reward) turn the pair into soft labels for the rDPO loss; `baselines.py` selects the SFT and
  distilled-self-critique baselines' data from the same pairs.
- DICE (`dice.py`): rounds of sampling K candidates, scoring them with the implicit reward of
  (policy, reference) through the forward-only fused op (`implicit.py`), length-debiased pairing and
  experience replay, then DPO with the previous policy as reference.
- Cross-lingual implicit rewarding (`crosslingual.py`): target-language responses scored under the
  English instruction with a language prefix (English itself without), length-controlled pairs,
  DPO + NLL, iterated.

DICE and cross-lingual share one round driver (`driver.py`); candidates are sampled with transformers'
generate (`generation.py`) or vLLM (`vllm_generation.py`). `presets.py` holds `--preset paper` and
`--preset cpu-demo`. Long runs keep their state in a run directory whose stages are skipped on a rerun
(`stages.py`). The subcommands are listed in `cli.SUBCOMMANDS` and registered on the `rdpo-fast` CLI.
"""
