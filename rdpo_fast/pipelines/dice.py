"""DICE: bootstrapping a DPO model with its own implicit rewards (Chen et al. 2024; SPEC section 5).

The rounds run through driver.RoundDriver. What is DICE's own:
  prompts   a fresh slice of the prompt pool per round, or the same prompts every round (upstream)
  score     r = log pi_{r-1}(y|x) - log ref_{r-1}(y|x) of every valid sample (the reward pair is
            selectable, driver.REWARD_PAIRS)
  pairs     drop truncated/degenerate samples; a prompt needs min_valid valid samples (upstream 8 of
            16); alpha from the length sweep (full-grid argmin, or DICE's early stop); pair the argmax
            and argmin of r - alpha * len(chars)
  mix       offline pairs (share gamma of the mix) whose prompts are disjoint from this round's
  eval      held-out implicit-reward accuracy of pi_r against the starting reference ref_0 (the
            training signal, measured on held-out pairs)
  final     the final policy against pi_0 on the general held-out prompts (AlpacaEval's kind) by an
            external judge: win rate and LC win rate (final_eval.py)
"""
from __future__ import annotations

from dataclasses import dataclass

from rdpo_fast.data.records import read_jsonl as read_preference_jsonl
from rdpo_fast.data.shipped import default_path
from rdpo_fast.data.templates import read_prompts, shipped_task_prompts
from rdpo_fast.io import read_json, table, write_json
from rdpo_fast.lm.chat import as_messages, user_turn
from rdpo_fast.models import loading as modeling

from .driver import RoundDriver, RoundSettings, round_indices, skipped
from .pairing import mix_replay
from .rounds import pair_groups, pair_logps, reward_accuracy


@dataclass
class DiceSettings(RoundSettings):
    prompts: str | None = None  # prompt file; default: the shipped task prompts
    eval_data: str | None = None  # held-out pairs; default: the shipped held-out split
    eval_pairs: int | None = None  # first n held-out pairs (None: all, 0: no evaluation)
    gamma: float = 0.5  # share of offline pairs in each round's training mix

    def validate(self) -> DiceSettings:
        super().validate()
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma (replay share) must be in [0, 1), got {self.gamma}")
        if self.eval_pairs is not None and self.eval_pairs < 0:
            raise ValueError(f"eval_pairs must be >= 0, got {self.eval_pairs}")
        return self


def offline_records(path: str) -> list[dict]:
    """Offline pairs as chat records with only prompt/chosen/rejected, the form the generated pairs
    have, so the mixed file is uniform (rdpo_fast.data.records wants one format and all-or-none optional fields)."""
    out = []
    for _, rec in read_preference_jsonl(path):
        conv = {k: (as_messages(rec[k]) if k == "prompt" else
                    ([{"role": "assistant", "content": rec[k]}] if isinstance(rec[k], str) else rec[k]))
                for k in ("prompt", "chosen", "rejected")}
        out.append(conv)
    return out


def round_prompts(pool: list[str], r: int, n: int, mode: str = "fresh") -> tuple[list[str], bool]:
    """Round r's prompts (see driver.round_indices) and whether they repeat earlier ones."""
    idx, wrapped = round_indices(len(pool), r, n, mode)
    return [pool[i] for i in idx], wrapped


class DiceRounds(RoundDriver):
    name = "dice"

    def prepare(self):
        s = self.s
        self.pool = read_prompts(s.prompts) if s.prompts else shipped_task_prompts()
        self.offline = offline_records(s.offline or default_path("train"))
        eval_path = s.eval_data or default_path("eval")
        self.held_out = [] if s.eval_pairs == 0 else offline_records(eval_path)[: s.eval_pairs]
        modeling.resolve(s.policy)
        if s.reference:
            modeling.resolve(s.reference)

    def round0_records(self):
        return [dict(r, origin="offline") for r in self.offline[: self.s.init_pairs]]

    def round_groups(self, r):
        s = self.s
        texts, wrapped = round_prompts(self.pool, r, s.prompts_per_round, s.prompt_pool)
        if wrapped and s.prompt_pool == "fresh":
            self.log(f"[round{r}] the prompt pool ({len(self.pool)}) is used up: prompts repeat from earlier rounds")
        return [{"prompt": user_turn(t, system=s.system)} for t in texts]

    def pair(self, scored):
        s = self.s
        return pair_groups(scored, min_valid=s.needed_valid, grid=self.grid(), alpha_rule=s.alpha_rule)

    def alpha_report(self, rd, st):
        if st.get("length_diff") is not None:
            self.log(f"[{rd}] alpha {st['alpha']:g} ({st['alpha_rule']}, {st['alpha_points_tried']} grid points "
                     f"tried): mean len(chosen) - len(rejected) {st['length_diff_alpha0']:+.1f} -> "
                     f"{st['length_diff']:+.1f} characters")

    def mix(self, pairs, r):
        mixed = mix_replay(pairs, self.offline, self.s.gamma, seed=self.s.seed + r)
        if mixed.offline < mixed.wanted:
            self.log(f"[round{r}] only {mixed.offline} offline pairs with disjoint prompts "
                     f"for the {mixed.wanted} wanted")
        return mixed.records, {"train_pairs": len(mixed.records), "offline": mixed.offline,
                               "offline_wanted": mixed.wanted, "offline_excluded_overlap": mixed.excluded_overlap}

    def before_rounds(self):
        if not self.held_out:
            return
        run, ref0 = self.run_dir, self.start[1]

        def ref_stage():
            p = run.file("eval", "reference.json")
            write_json(p, pair_logps(self.models.model(ref0), self.tok, self.held_out, self.s.score_batch_size))
            return {}, [p]

        run.run("eval/reference", ref_stage)

    def evaluate(self, name, path):
        if not self.held_out:
            return None
        run = self.run_dir

        def go():
            p = run.file("eval", f"{name}.json")
            write_json(p, pair_logps(self.models.model(path), self.tok, self.held_out, self.s.score_batch_size))
            return reward_accuracy(read_json(p), read_json(run.file("eval", "reference.json"))), [p]

        return run.run(f"eval/{name}", go)

    def final_eval_prompts(self):
        return "general", None

    def summary_extra(self, chain):
        return {"reference": chain[0][1]}

    def summary_table(self, rows):
        return summary_table(rows)


def run_dice(s: DiceSettings, output_dir: str, *, overwrite: bool = False, final_eval=None, log=print) -> dict:
    return DiceRounds(s, output_dir, overwrite=overwrite, final_eval=final_eval, log=log).run()


def summary_table(rows: list[dict]) -> str:
    out = []
    for row in rows:
        ev = row.get("eval") or {}
        valid = None
        if "candidates" in row:
            valid = row["candidates"] - sum(row.get(f"dropped_{k}", 0) for k in ("truncated", "empty", "repetitive"))
        ld = None
        if row.get("length_diff") is not None:
            ld = f"{row['length_diff_alpha0']:+.0f} -> {row['length_diff']:+.0f}"
        out.append([row["round"], row.get("prompts"), valid, skipped(row) if "candidates" in row else None,
                    row.get("pairs"), row.get("alpha"), ld, row.get("offline"), row.get("steps"),
                    ev.get("accuracy"), ev.get("margin"), row.get("seconds")])
    return table(["round", "prompts", "valid samples", "skipped prompts", "pairs made", "alpha",
                  "len diff a=0 -> alpha", "offline mixed", "train steps", "implicit held-out acc",
                  "implicit held-out margin", "stage s"],
                 out, title="DICE (implicit: held-out implicit-reward accuracy of each round's policy against the "
                            "starting reference; round 0 is the starting DPO model)")
