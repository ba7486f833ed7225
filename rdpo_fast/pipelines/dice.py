"""DICE: bootstrapping a DPO model with its own implicit rewards (Chen et al. 2024; SPEC section 5).

Round r (1..R), each stage a resumable step of the run directory:
  generate  K samples per prompt from pi_{r-1} (a fresh slice of the prompt pool per round)
  score     r = log pi_{r-1}(y|x) - log ref_{r-1}(y|x) of every valid sample, batched, forward-only fused op
  pairs     drop truncated/degenerate samples, sweep alpha for zero mean length difference, pair the
            argmax and argmin of r - alpha * len(chars); prompts without two valid samples are skipped
  mix       add offline pairs (share gamma of the mix) whose prompts are disjoint from this round's
  train     DPO from pi_{r-1} with pi_{r-1} as reference -> pi_r, which is the next round's reference
  eval      held-out implicit-reward accuracy of pi_r against the starting reference ref_0
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from rdpo_fast import modeling
from rdpo_fast.data import read_jsonl as read_preference_jsonl
from rdpo_fast.data_files import default_path

from .chat import BRIEF_SYSTEM, as_messages, user_turn
from .generation import GenerationSettings
from .implicit import ImplicitReward
from .pairing import mix_replay
from .report import table
from .rounds import (Models, TrainSettings, candidates_record, materialise, pair_groups, pair_logps,
                     reward_accuracy, sample_groups, score_groups, train_stage)
from .stages import RunDir, read_json, read_jsonl, write_json, write_jsonl
from .templates import read_prompts, shipped_task_prompts


@dataclass
class DiceSettings:
    policy: str = "smollm2-135m"
    reference: str | None = None  # the policy's DPO reference; None: round 0 trains pi_0 by DPO first
    prompts: str | None = None  # prompt file; default: the shipped task prompts
    offline: str | None = None  # offline preference JSONL; default: the shipped training pairs
    eval_data: str | None = None  # held-out pairs; default: the shipped held-out split
    eval_pairs: int | None = None  # first n held-out pairs (None: all, 0: no evaluation)
    rounds: int = 2
    k: int = 4
    prompts_per_round: int = 16
    gamma: float = 0.5  # share of offline pairs in each round's training mix
    init_pairs: int = 64  # offline pairs of the round-0 DPO (without --reference)
    system: str | None = BRIEF_SYSTEM
    keep_truncated: bool = False
    score_batch_size: int = 8
    seed: int = 0
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def validate(self) -> "DiceSettings":
        if self.k < 2:
            raise ValueError(f"K (samples per prompt) must be >= 2: a pair needs two candidates, got {self.k}")
        if self.generation.temperature == 0:
            raise ValueError("K greedy samples per prompt would all be the same; sample with temperature > 0")
        for name in ("rounds", "prompts_per_round", "init_pairs", "score_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma (replay share) must be in [0, 1), got {self.gamma}")
        if self.eval_pairs is not None and self.eval_pairs < 0:
            raise ValueError(f"eval_pairs must be >= 0, got {self.eval_pairs}")
        self.generation.validate()
        self.train.check()
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["generation"].pop("progress")
        d["train"] = self.train.to_dict()
        return d


def offline_records(path: str) -> list[dict]:
    """Offline pairs as chat records with only prompt/chosen/rejected, the form the generated pairs
    have, so the mixed file is uniform (rdpo_fast.data wants one format and all-or-none optional fields)."""
    out = []
    for _, rec in read_preference_jsonl(path):
        conv = {k: (as_messages(rec[k]) if k == "prompt" else
                    ([{"role": "assistant", "content": rec[k]}] if isinstance(rec[k], str) else rec[k]))
                for k in ("prompt", "chosen", "rejected")}
        out.append(conv)
    return out


def round_prompts(pool: list[str], r: int, n: int) -> tuple[list[str], bool]:
    """Round r's prompts: the r-th slice of n, wrapping around the pool (True when it wrapped)."""
    start = (r - 1) * n
    idx = [(start + i) % len(pool) for i in range(n)]
    return [pool[i] for i in idx], start + n > len(pool)


def run_dice(s: DiceSettings, output_dir: str, *, overwrite: bool = False, log=print) -> dict:
    s.validate()
    # Every input is read and checked before a model loads or anything is written.
    pool = read_prompts(s.prompts) if s.prompts else shipped_task_prompts()
    offline = offline_records(s.offline or default_path("train"))
    eval_path = s.eval_data or default_path("eval")
    held_out = [] if s.eval_pairs == 0 else offline_records(eval_path)[: s.eval_pairs]
    modeling.resolve(s.policy)
    if s.reference:
        modeling.resolve(s.reference)
    run = RunDir(output_dir, s.to_dict(), overwrite=overwrite, log=log)
    models = Models()

    # pi_0 and ref_0
    base = materialise(run, models, "policy", s.policy)
    rows = []
    if s.reference and s.reference != s.policy:
        ref0, pi0 = materialise(run, models, "reference", s.reference), base
        rows.append({"round": 0, "note": "given DPO model"})
    else:
        ref0 = base
        init = offline[: s.init_pairs]

        def init_data():
            path = run.file("round0", "train.jsonl")
            write_jsonl(path, [dict(r, origin="offline") for r in init])
            return {"pairs": len(init)}, [path]

        run.run("round0/data", init_data)
        models.keep()
        t = train_stage(run, "round0/train", s.train, model=base, data=run.file("round0", "train.jsonl"),
                        n_pairs=len(init), log=log)
        pi0 = os.path.join(run.path, "round0", "train", "final")
        rows.append({"round": 0, "note": "initial DPO on offline pairs", "offline": len(init),
                     "pairs": len(init), "steps": t.get("global_step")})
    tok = models.tokenizer(base)

    def ref_stage():
        p = run.file("eval", "reference.json")
        write_json(p, pair_logps(models.model(ref0), tok, held_out, s.score_batch_size))
        return {}, [p]

    if held_out:
        run.run("eval/reference", ref_stage)

    def evaluate(name, path):
        if not held_out:
            return None

        def go():
            p = run.file("eval", f"{name}.json")
            write_json(p, pair_logps(models.model(path), tok, held_out, s.score_batch_size))
            return reward_accuracy(read_json(p), read_json(run.file("eval", "reference.json"))), [p]

        return run.run(f"eval/{name}", go)

    rows[0]["eval"] = evaluate("round0", pi0)
    chain = [(pi0, ref0)]
    for r in range(1, s.rounds + 1):
        pol, ref = chain[-1]
        rd = f"round{r}"
        texts, wrapped = round_prompts(pool, r, s.prompts_per_round)
        if wrapped:
            log(f"[{rd}] the prompt pool ({len(pool)}) is used up: prompts repeat from earlier rounds")
        convs = [user_turn(t, system=s.system) for t in texts]

        def gen_stage():
            g = dataclasses.replace(s.generation, seed=s.generation.seed + 1000 * r + s.seed)
            groups = sample_groups(models.model(pol), tok, convs, s.k, g)
            recs = [candidates_record(c, smp, drop_truncated=not s.keep_truncated) for c, smp in zip(convs, groups)]
            path = run.file(rd, "candidates.jsonl")
            write_jsonl(path, recs)
            return {"prompts": len(recs)}, [path]

        def score_stage():
            groups = read_jsonl(run.file(rd, "candidates.jsonl"))
            reward = ImplicitReward(models.model(pol), models.model(ref), tok, batch_size=s.score_batch_size)
            path = run.file(rd, "scored.jsonl")
            write_jsonl(path, score_groups(reward, groups))
            return {}, [path]

        def pair_stage():
            pairs, st = pair_groups(read_jsonl(run.file(rd, "scored.jsonl")))
            path = run.file(rd, "pairs.jsonl")
            write_jsonl(path, pairs)
            return st, [path]

        def mix_stage():
            mixed = mix_replay(read_jsonl(run.file(rd, "pairs.jsonl")), offline, s.gamma, seed=s.seed + r)
            if mixed.offline < mixed.wanted:
                log(f"[{rd}] only {mixed.offline} offline pairs with disjoint prompts for the {mixed.wanted} wanted")
            path = run.file(rd, "train.jsonl")
            write_jsonl(path, mixed.records)
            return {"train_pairs": len(mixed.records), "offline": mixed.offline, "offline_wanted": mixed.wanted,
                    "offline_excluded_overlap": mixed.excluded_overlap}, [path]

        run.run(f"{rd}/generate", gen_stage)
        run.run(f"{rd}/score", score_stage)
        pst = run.run(f"{rd}/pairs", pair_stage)
        mst = run.run(f"{rd}/mix", mix_stage)
        models.keep()  # free memory for training, which loads its own copy
        if mst["train_pairs"] == 0:
            raise ValueError(f"[{rd}] no pairs to train on: every prompt was skipped ({pst['skipped_no_valid']} with "
                             f"no valid sample, {pst['skipped_one_valid']} with one, {pst['skipped_tied']} tied); "
                             "raise --max-new-tokens or K, or pass --keep-truncated")
        t = train_stage(run, f"{rd}/train", s.train, model=pol, data=run.file(rd, "train.jsonl"),
                        n_pairs=mst["train_pairs"], log=log)
        new = os.path.join(run.path, rd, "train", "final")
        rows.append({"round": r, **pst, **mst, "steps": t.get("global_step"), "eval": evaluate(rd, new)})
        chain.append((new, pol))
        models.keep()

    secs = run.seconds()
    for row in rows:
        rd = f"round{row['round']}/"
        row["seconds"] = round(sum(v for k, v in secs.items() if k.startswith(rd) or k == f"eval/round{row['round']}"), 1)
    summary = {"rounds": rows, "final_policy": chain[-1][0], "reference": ref0, "stage_seconds": secs}
    write_json(os.path.join(run.path, "summary.json"), summary)
    log(summary_table(rows))
    log(f"final policy: {chain[-1][0]}")
    return summary


def summary_table(rows: list[dict]) -> str:
    out = []
    for row in rows:
        ev = row.get("eval") or {}
        valid = None
        if "candidates" in row:
            valid = row["candidates"] - sum(row.get(f"dropped_{k}", 0) for k in ("truncated", "empty", "repetitive"))
        skipped = (row["skipped_no_valid"] + row["skipped_one_valid"] + row["skipped_tied"]
                   if "skipped_no_valid" in row else None)
        ld = None
        if row.get("length_diff") is not None:
            ld = f"{row['length_diff_alpha0']:+.0f} -> {row['length_diff']:+.0f}"
        out.append([row["round"], row.get("prompts"), valid, skipped, row.get("pairs"), row.get("alpha"), ld,
                    row.get("offline"), row.get("steps"), ev.get("accuracy"), ev.get("margin"), row.get("seconds")])
    return table(["round", "prompts", "valid samples", "skipped prompts", "pairs made", "alpha",
                  "len diff a=0 -> alpha", "offline mixed", "train steps", "held-out acc", "held-out margin", "stage s"],
                 out, title="DICE (held-out implicit-reward accuracy of each round's policy against the starting "
                            "reference; round 0 is the starting DPO model)")
