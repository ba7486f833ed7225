"""The round driver shared by DICE (dice.py) and cross-lingual rewarding (crosslingual.py).

Both run the same skeleton, each step a resumable stage of the run directory:
  round 0   pi_0 and ref_0: a given DPO model and its reference, or DPO on offline pairs from the policy
  round r   generate  K samples per prompt from pi_{r-1} (transformers' generate, or vLLM)
            score     the implicit reward of the chosen reward pair (REWARD_PAIRS) on every valid sample
            pairs     length-debiased argmax/argmin pairs (pairing.py), prompts with too few valid
                      samples skipped and counted
            mix       the pipeline's training mix (DICE: offline replay on disjoint prompts)
            train     from pi_{r-1} with pi_{r-1} as the reference -> pi_r
            eval      the pipeline's held-out implicit-reward measure of pi_r (its own training signal)
  final_eval the final policy against pi_0 by an external judge on held-out prompts (final_eval.py)
  finish    summary.json: every round's numbers, the external evaluation, the starting and final policy

A pipeline is a subclass that says what differs: its settings, the prompts of a round, how it pairs,
mixes and evaluates, and its summary table. `RoundDriver.finish` is the one place a run ends.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from rdpo_fast.io import write_json, write_jsonl
from rdpo_fast.lm.generation import GenerationSettings, generate
from rdpo_fast.lm.vllm import VllmSettings, generate_vllm, require_vllm
from rdpo_fast.models.sources import DEFAULT_MODEL

from .final_eval import FinalEval, FinalEvalSettings
from .final_eval import summary_table as final_eval_table
from .implicit import ImplicitReward
from .pairing import ALPHA_RULES, alpha_grid
from .rounds import (
    Models,
    TrainSettings,
    candidates_record,
    default_min_valid,
    materialise,
    sample_groups,
    score_groups,
    train_stage,
)
from .stages import StageDir, read_stage_records

# Which implicit reward scores round r's samples; chain[r-1] = (pi_{r-1}, ref_{r-1}), chain[0] = (pi_0, ref_0).
REWARD_PAIRS = {
    "previous": "(pi_{r-1}, ref_{r-1}): the last round's policy and its reference (DICE; iterated)",
    "initial": "(pi_0, ref_0): always the starting DPO model and its reference (fixed)",
    "previous-vs-initial": "(pi_{r-1}, ref_0): the last round's policy against the starting reference",
}
PROMPT_POOLS = ("fresh", "same")  # fresh: the r-th slice of the pool per round; same: the same prompts every round
GENERATORS = ("transformers", "vllm")


def long_generation() -> GenerationSettings:
    """Sampling as the papers ran it (no length hint in the prompt, temperature 0.9, top-p 1.0), at a
    length that leaves room for full answers."""
    return GenerationSettings(max_new_tokens=1024, temperature=0.9, top_p=1.0)


def reward_pair(choice: str, chain: list[tuple[str, str]]) -> tuple[str, str]:
    """(policy, reference) of the implicit reward for the next round, given the chain so far."""
    if choice not in REWARD_PAIRS:
        raise ValueError(f"unknown reward pair {choice!r}; valid: {', '.join(REWARD_PAIRS)}")
    (pi0, ref0), (pol, ref) = chain[0], chain[-1]
    return {"previous": (pol, ref), "initial": (pi0, ref0), "previous-vs-initial": (pol, ref0)}[choice]


def round_indices(pool_size: int, r: int, n: int, mode: str) -> tuple[list[int], bool]:
    """Indices of round r's prompts (r >= 1) and whether they repeat earlier rounds' because the pool
    ran out. n = 0 takes the whole pool; mode 'same' takes the first n prompts every round."""
    if mode not in PROMPT_POOLS:
        raise ValueError(f"unknown prompt pool mode {mode!r}; valid: {', '.join(PROMPT_POOLS)}")
    n = n or pool_size
    if mode == "same":
        return [i % pool_size for i in range(n)], n > pool_size
    start = (r - 1) * n
    return [(start + i) % pool_size for i in range(n)], start + n > pool_size


@dataclass
class RoundSettings:
    """Settings every round pipeline shares; a pipeline's settings extend these."""
    policy: str = DEFAULT_MODEL
    reference: str | None = None  # the policy's DPO reference; None: round 0 trains pi_0 by DPO first
    offline: str | None = None  # offline preference JSONL; default: the shipped training pairs
    init_pairs: int = 64  # offline pairs of the round-0 DPO (without --reference)
    rounds: int = 2
    k: int = 4
    prompts_per_round: int = 16  # 0: the whole pool
    prompt_pool: str = "fresh"
    min_valid: int | None = None  # valid samples a prompt needs to form a pair; None: max(2, K // 2)
    alpha_rule: str = "argmin"
    alpha_start: float = 0.0
    alpha_stop: float = 1.0
    alpha_step: float = 0.001
    reward_pair: str = "previous"
    system: str | None = None
    keep_truncated: bool = False
    score_batch_size: int = 8
    score_max_tokens: int | None = None  # token budget of one scoring forward (rows x longest row)
    generator: str = "transformers"
    vllm: VllmSettings = field(default_factory=VllmSettings)
    seed: int = 0
    generation: GenerationSettings = field(default_factory=long_generation)
    train: TrainSettings = field(default_factory=TrainSettings)

    @property
    def needed_valid(self) -> int:
        return self.min_valid if self.min_valid is not None else default_min_valid(self.k)

    def grid(self):
        return alpha_grid(self.alpha_start, self.alpha_stop, self.alpha_step)

    def validate(self):
        if self.k < 2:
            raise ValueError(f"K (samples per prompt) must be >= 2: a pair needs two candidates, got {self.k}")
        if self.generation.temperature == 0:
            raise ValueError("K greedy samples per prompt would all be the same; sample with temperature > 0")
        for name in ("rounds", "init_pairs", "score_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prompts_per_round < 0:
            raise ValueError(f"prompts_per_round must be >= 0 (0: the whole pool), got {self.prompts_per_round}")
        if self.score_max_tokens is not None and self.score_max_tokens < 1:
            raise ValueError(f"score_max_tokens must be >= 1, got {self.score_max_tokens}")
        if self.min_valid is not None and not 2 <= self.min_valid <= self.k:
            raise ValueError(f"min_valid must be in [2, K={self.k}], got {self.min_valid}")
        if self.prompt_pool not in PROMPT_POOLS:
            raise ValueError(f"prompt_pool must be one of {', '.join(PROMPT_POOLS)}, got {self.prompt_pool!r}")
        if self.alpha_rule not in ALPHA_RULES:
            raise ValueError(f"alpha_rule must be one of {', '.join(ALPHA_RULES)}, got {self.alpha_rule!r}")
        if self.reward_pair not in REWARD_PAIRS:
            raise ValueError(f"reward_pair must be one of {', '.join(REWARD_PAIRS)}, got {self.reward_pair!r}")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
        if self.train.loss_type == "rdpo":
            raise ValueError("loss_type 'rdpo' needs soft labels from an external scorer; implicit-reward pairs "
                             "carry none (use sigmoid, or the rDPO chain: rdpo-fast rdpo)")
        self.grid()
        self.generation.validate()
        self.vllm.validate()
        self.train.check()
        if self.generator == "vllm":
            require_vllm()  # fail before a model loads, not after round 0's training
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["generation"].pop("progress")
        d["train"] = self.train.to_dict()
        return d


class RoundDriver:
    """Runs the rounds of one pipeline; subclasses fill in the hooks marked 'pipeline'."""
    name = "rounds"

    def __init__(self, settings: RoundSettings, output_dir: str, *, overwrite: bool = False,
                 final_eval: FinalEvalSettings | None = None, log=print):
        self.s, self.output_dir, self.overwrite, self.log = settings, output_dir, overwrite, log
        self.final_eval_settings = final_eval
        self.models = Models()
        self.run_dir: StageDir | None = None
        self.tok = None

    # ------------------------------------------------------------------ pipeline hooks
    def prepare(self) -> None:
        """Reads and checks every input; runs before a model loads or anything is written."""

    def given_dpo(self) -> bool:
        return bool(self.s.reference) and self.s.reference != self.s.policy

    def round0_records(self) -> list[dict]:
        """The offline pairs of the round-0 DPO."""
        raise NotImplementedError

    def round0_train(self) -> TrainSettings:
        return self.s.train

    def round0_note(self) -> str:
        return "initial DPO on offline pairs"

    def round_groups(self, r: int) -> list[dict]:
        """Round r's prompts: {"prompt": chat messages, optional "score_prompt", other fields kept}."""
        raise NotImplementedError

    def pair(self, scored: list[dict]) -> tuple[list[dict], dict]:
        raise NotImplementedError

    def mix(self, pairs: list[dict], r: int) -> tuple[list[dict], dict]:
        return pairs, {"train_pairs": len(pairs), "offline": 0}

    def before_rounds(self) -> None:
        """Stages that the evaluation needs once (e.g. the reference's held-out log-probs)."""

    def evaluate(self, name: str, path: str) -> dict | None:
        return None

    def final_eval_prompts(self) -> tuple[str, list[str] | None]:
        """The held-out set of the external evaluation (final_eval.py) and its languages."""
        return "general", None

    def alpha_report(self, rd: str, stats: dict) -> None:
        pass

    def summary_table(self, rows: list[dict]) -> str:
        raise NotImplementedError

    def summary_extra(self, chain) -> dict:
        return {}

    # ------------------------------------------------------------------ shared steps
    def grid(self):
        return self.s.grid()

    def generate(self, path: str, conversations, *, num_samples: int, settings: GenerationSettings, desc: str):
        """Samples of `path` through the configured generator (transformers loads it from the models
        cache; vLLM reads the directory)."""
        if self.s.generator == "vllm":
            self.models.keep()  # the GPU memory goes to vLLM's engine
            return generate_vllm(path, self.tok, conversations, num_samples=num_samples, settings=settings,
                                 vllm_settings=self.s.vllm, desc=desc)
        if num_samples >= 2:
            return sample_groups(self.models.model(path), self.tok, conversations, num_samples, settings)
        return generate(self.models.model(path), self.tok, conversations, num_samples=num_samples, settings=settings,
                        desc=desc)

    def reward(self, policy: str, reference: str) -> ImplicitReward:
        return ImplicitReward(self.models.model(policy), self.models.model(reference), self.tok,
                              batch_size=self.s.score_batch_size, max_batch_tokens=self.s.score_max_tokens)

    # ------------------------------------------------------------------ the skeleton
    def run(self) -> dict:
        s = self.s
        s.validate()
        self.prepare()
        prompts, languages = self.final_eval_prompts()
        self.final_eval = FinalEval(self.final_eval_settings, default_prompts=prompts, languages=languages,
                                    system=s.system, log=self.log)
        self.final_eval.prepare()
        with StageDir(self.output_dir, s.to_dict(), overwrite=self.overwrite, log=self.log) as run:
            self.run_dir = run
            return self.run_stages(run)

    def run_stages(self, run: StageDir) -> dict:
        """Every stage, in the run directory this process holds."""
        s, models = self.s, self.models

        base = materialise(run, models, "policy", s.policy)
        rows = []
        if self.given_dpo():
            ref0, pi0 = materialise(run, models, "reference", s.reference), base
            rows.append({"round": 0, "note": "given DPO model"})
        else:
            ref0 = base
            init = self.round0_records()

            def init_data():
                path = run.file("round0", "train.jsonl")
                write_jsonl(path, init)
                return {"pairs": len(init)}, [path]

            run.run("round0/data", init_data)
            models.keep()
            t = train_stage(run, "round0/train", self.round0_train(), model=base,
                            data=run.file("round0", "train.jsonl"), n_pairs=len(init), log=self.log)
            pi0 = os.path.join(run.path, "round0", "train", "final")
            rows.append({"round": 0, "note": self.round0_note(), "pairs": len(init), "steps": t.get("global_step")})
        self.tok = models.tokenizer(base)
        self.start = (pi0, ref0)
        self.before_rounds()
        rows[0]["eval"] = self.evaluate("round0", pi0)

        chain = [(pi0, ref0)]
        for r in range(1, s.rounds + 1):
            rows.append(self.run_round(r, chain))
            chain.append((os.path.join(run.path, f"round{r}", "train", "final"), chain[-1][0]))
            models.keep()
        return self.finish(rows, chain)

    def run_round(self, r: int, chain) -> dict:
        s, run, rd = self.s, self.run_dir, f"round{r}"
        pol = chain[-1][0]
        rew_pol, rew_ref = reward_pair(s.reward_pair, chain)
        groups = self.round_groups(r)

        def gen_stage():
            g = dataclasses.replace(s.generation, seed=s.generation.seed + 1000 * r + s.seed)
            samples = self.generate(pol, [x["prompt"] for x in groups], num_samples=s.k, settings=g,
                                    desc=f"{rd}: sample K={s.k}")
            recs = [candidates_record(x["prompt"], smp, drop_truncated=not s.keep_truncated,
                                      **{k: v for k, v in x.items() if k != "prompt"})
                    for x, smp in zip(groups, samples)]
            path = run.file(rd, "candidates.jsonl")
            write_jsonl(path, recs)
            return {"prompts": len(recs), "generator": s.generator}, [path]

        def score_stage():
            cands = read_stage_records(run.file(rd, "candidates.jsonl"))
            key = "score_prompt" if cands and "score_prompt" in cands[0] else "prompt"
            reward = self.reward(rew_pol, rew_ref)
            path = run.file(rd, "scored.jsonl")
            write_jsonl(path, score_groups(reward, cands, score_key=key))
            st = dict(reward.stats, reward_policy=rew_pol, reward_reference=rew_ref)
            if st.get("tokens_per_s"):
                self.log(f"[{rd}] implicit reward: {st['sequences']} samples, {st['forward_tokens']} tokens through "
                         f"2 models, {st['tokens_per_s']:.0f} tokens/s, padding {100 * st['padding']:.0f}%")
            return st, [path]

        def pair_stage():
            pairs, st = self.pair(read_stage_records(run.file(rd, "scored.jsonl")))
            path = run.file(rd, "pairs.jsonl")
            write_jsonl(path, pairs)
            return st, [path]

        def mix_stage():
            records, st = self.mix(read_stage_records(run.file(rd, "pairs.jsonl")), r)
            path = run.file(rd, "train.jsonl")
            write_jsonl(path, records)
            return st, [path]

        run.run(f"{rd}/generate", gen_stage)
        sst = run.run(f"{rd}/score", score_stage)
        pst = run.run(f"{rd}/pairs", pair_stage)
        self.alpha_report(rd, pst)
        mst = run.run(f"{rd}/mix", mix_stage)
        self.models.keep()  # free memory for training, which loads its own copy
        if mst["train_pairs"] == 0:
            raise ValueError(f"[{rd}] no pairs to train on: every prompt was skipped ({skip_summary(pst)}); raise "
                             "--max-new-tokens or K, lower --min-valid, or pass --keep-truncated")
        t = train_stage(run, f"{rd}/train", s.train, model=pol, data=run.file(rd, "train.jsonl"),
                        n_pairs=mst["train_pairs"], log=self.log)
        new = os.path.join(run.path, rd, "train", "final")
        return {"round": r, **pst, **mst, "steps": t.get("global_step"), "reward_pair": [rew_pol, rew_ref],
                "scoring": {k: sst.get(k) for k in ("forward_tokens", "padding", "tokens_per_s")},
                "eval": self.evaluate(rd, new)}

    def finish(self, rows: list[dict], chain) -> dict:
        """The one place a run ends: the external evaluation of the final policy against pi_0, then
        summary.json with every round, that evaluation, the starting and the final policy."""
        run = self.run_dir
        self.models.keep()
        final_eval = self.final_eval.run(run, self.models, chain[0][0], chain[-1][0])
        secs = run.seconds()
        for row in rows:
            rd = f"round{row['round']}/"
            row["seconds"] = round(sum(v for k, v in secs.items()
                                       if k.startswith(rd) or k == f"eval/round{row['round']}"), 1)
        pi0, ref0 = chain[0]
        summary = {"pipeline": self.name, "rounds": rows, "start_policy": pi0, "start_reference": ref0,
                   "final_policy": chain[-1][0], **self.summary_extra(chain), "final_eval": final_eval,
                   "stage_seconds": secs}
        write_json(os.path.join(run.path, "summary.json"), summary)
        self.log(self.summary_table(rows))
        self.log(final_eval_table(final_eval))
        self.log(f"final policy: {summary['final_policy']}")
        return summary


def skip_summary(stats: dict) -> str:
    parts = [f"{stats.get('skipped_no_valid', 0)} with no valid sample",
             f"{stats.get('skipped_one_valid', 0)} with one",
             f"{stats.get('skipped_few_valid', 0)} with fewer than {stats.get('min_valid', 2)} valid",
             f"{stats.get('skipped_tied', 0)} tied"]
    return ", ".join(parts)


def skipped(stats: dict) -> int:
    return sum(stats.get(k, 0) for k in ("skipped_no_valid", "skipped_one_valid", "skipped_few_valid", "skipped_tied"))
