"""Implicit cross-lingual rewarding (Yang et al. 2025; SPEC section 5).

An English DPO model and its reference define the implicit reward r = log pi(y|x) - log pi_ref(y|x).
Responses to a target-language instruction are scored under the *English* instruction with the prefix
"Please answer the following instruction using only {language}, ...", so the English preferences
judge them. Per language: K samples per prompt from the current policy, truncated/degenerate ones
dropped, a length-controlled pair (alpha sweep per language, lengths being comparable only within a
language) whose prompt is the target-language instruction. All languages' pairs train DPO + NLL on
chosen from the current policy (which is also the DPO reference); the result is the next round's
policy. The scoring pair is iterated like DICE, (pi_{r-1}, ref_{r-1}), or kept fixed (--scorer fixed).

Held-out measure: greedy answers of each round's policy to held-out parallel prompts (never trained
on), scored by the starting English reward (pi_0, ref_0): their mean reward and the win rate against
round 0's answers.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from rdpo_fast import modeling
from rdpo_fast.data_files import default_path

from .chat import BRIEF_SYSTEM, user_turn
from .dice import offline_records
from .generation import GenerationSettings, generate
from .implicit import ImplicitReward
from .report import table
from .rounds import (Models, TrainSettings, candidates_record, materialise, pair_groups, sample_groups,
                     score_groups, train_stage)
from .stages import RunDir, read_jsonl, write_json, write_jsonl
from .templates import PARALLEL_PROMPTS, read_parallel

PREFIX = ("Please answer the following instruction using only {language}, unless explicitly instructed to "
          "respond in a different language.\n\n")
LANGUAGE_NAMES = {
    "ar": "Arabic", "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "eu": "Basque", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi",
    "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch",
    "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sv": "Swedish",
    "sw": "Swahili", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}


def language_prefix(code: str) -> str:
    if code not in LANGUAGE_NAMES:
        raise ValueError(f"unknown language code {code!r}; known: {', '.join(sorted(LANGUAGE_NAMES))}")
    return PREFIX.format(language=LANGUAGE_NAMES[code])


def _default_train() -> TrainSettings:
    return TrainSettings(nll_alpha=1.0)


@dataclass
class CrossLingualSettings:
    policy: str = "smollm2-135m"  # the English DPO model (without --reference: round 0 trains it)
    reference: str | None = None
    parallel: str | None = None  # parallel prompt JSONL; default: the shipped set
    languages: tuple[str, ...] = ("es", "fr", "de", "it")
    offline: str | None = None  # English pairs of the round-0 DPO; default: the shipped training pairs
    init_pairs: int = 64
    rounds: int = 2
    k: int = 4
    prompts_per_round: int = 8  # per language
    eval_prompts: int = 4  # held-out prompts per language: the last rows of the parallel set
    scorer: str = "iterate"  # or "fixed": always the starting English (pi_0, ref_0)
    system: str | None = BRIEF_SYSTEM
    keep_truncated: bool = False
    score_batch_size: int = 8
    seed: int = 0
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    train: TrainSettings = field(default_factory=_default_train)

    def validate(self) -> "CrossLingualSettings":
        if self.k < 2:
            raise ValueError(f"K (samples per prompt) must be >= 2: a pair needs two candidates, got {self.k}")
        if self.generation.temperature == 0:
            raise ValueError("K greedy samples per prompt would all be the same; sample with temperature > 0")
        for name in ("rounds", "prompts_per_round", "init_pairs", "score_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_prompts < 0:
            raise ValueError(f"eval_prompts must be >= 0, got {self.eval_prompts}")
        if self.scorer not in ("iterate", "fixed"):
            raise ValueError(f"scorer must be 'iterate' or 'fixed', got {self.scorer!r}")
        if not self.languages:
            raise ValueError("give at least one target language")
        if len(set(self.languages)) != len(self.languages):
            raise ValueError(f"languages repeat: {list(self.languages)}")
        for code in self.languages:
            language_prefix(code)
        self.generation.validate()
        self.train.check()
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["languages"] = list(self.languages)
        d["generation"].pop("progress")
        d["train"] = self.train.to_dict()
        return d


def build_groups(rows: list[dict], languages, system) -> list[dict]:
    """Per (language, prompt): the target-language chat prompt and the prefixed English scoring prompt."""
    return [{"prompt": user_turn(row[lang], system=system),
             "score_prompt": user_turn(language_prefix(lang) + row["en"], system=system),
             "language": lang, "id": row["id"]}
            for lang in languages for row in rows]


def run_crosslingual(s: CrossLingualSettings, output_dir: str, *, overwrite: bool = False, log=print) -> dict:
    s.validate()
    rows = read_parallel(s.parallel or PARALLEL_PROMPTS)
    missing = [c for c in s.languages if c not in rows[0]]
    if missing:
        raise ValueError(f"languages {missing} are not in the parallel prompt file (it has "
                         f"{sorted(k for k in rows[0] if k != 'id')})")
    if s.eval_prompts >= len(rows):
        raise ValueError(f"eval_prompts={s.eval_prompts} leaves none of the {len(rows)} parallel prompts for training")
    held_rows, pool = rows[len(rows) - s.eval_prompts:] if s.eval_prompts else [], rows[: len(rows) - s.eval_prompts]
    given_dpo = bool(s.reference) and s.reference != s.policy
    offline = [] if given_dpo else offline_records(s.offline or default_path("train"))
    modeling.resolve(s.policy)
    if s.reference:
        modeling.resolve(s.reference)
    run = RunDir(output_dir, s.to_dict(), overwrite=overwrite, log=log)
    models = Models()

    base = materialise(run, models, "policy", s.policy)
    table_rows = []
    if given_dpo:
        ref0, pi0 = materialise(run, models, "reference", s.reference), base
        table_rows.append({"round": 0, "note": "given English DPO model"})
    else:
        ref0 = base
        init = offline[: s.init_pairs]

        def init_data():
            path = run.file("round0", "train.jsonl")
            write_jsonl(path, init)
            return {"pairs": len(init)}, [path]

        run.run("round0/data", init_data)
        models.keep()
        english = dataclasses.replace(s.train, nll_alpha=0.0)  # the English model is plain DPO
        t = train_stage(run, "round0/train", english, model=base, data=run.file("round0", "train.jsonl"),
                        n_pairs=len(init), log=log)
        pi0 = os.path.join(run.path, "round0", "train", "final")
        table_rows.append({"round": 0, "note": "English DPO on offline pairs", "steps": t.get("global_step")})
    tok = models.tokenizer(base)
    held = build_groups(held_rows, s.languages, s.system)

    def evaluate(name, path):
        """Greedy answers of `path` to the held-out prompts, scored by the starting English reward."""
        if not held:
            return None

        def go():
            g = dataclasses.replace(s.generation, temperature=0.0)
            answers = [out[0] for out in generate(models.model(path), tok, [h["prompt"] for h in held],
                                                  settings=g, desc=f"held-out answers ({name})")]
            reward = ImplicitReward(models.model(pi0), models.model(ref0), tok, batch_size=s.score_batch_size)
            sc = reward([h["score_prompt"] for h in held], [a.text.strip() for a in answers])
            recs = [{"language": h["language"], "id": h["id"], "answer": a.text.strip(), "truncated": a.truncated,
                     "reward": float(v)} for h, a, v in zip(held, answers, sc.reward)]
            p = run.file("eval", f"{name}.jsonl")
            write_jsonl(p, recs)
            st = {"mean_reward": sum(x["reward"] for x in recs) / len(recs),
                  "truncated": sum(x["truncated"] for x in recs), "prompts": len(recs)}
            if name != "round0":
                before = read_jsonl(run.file("eval", "round0.jsonl"))
                wins = [1.0 if a["reward"] > b["reward"] else 0.5 if a["reward"] == b["reward"] else 0.0
                        for a, b in zip(recs, before)]
                st["win_rate_vs_round0"] = sum(wins) / len(wins)
            return st, [p]

        return run.run(f"eval/{name}", go)

    table_rows[0]["eval"] = evaluate("round0", pi0)
    chain = [(pi0, ref0)]
    for r in range(1, s.rounds + 1):
        pol, ref = chain[-1]
        scorer = (pol, ref) if s.scorer == "iterate" else (pi0, ref0)
        rd = f"round{r}"
        start = (r - 1) * s.prompts_per_round
        idx = [(start + i) % len(pool) for i in range(s.prompts_per_round)]
        if start + s.prompts_per_round > len(pool):
            log(f"[{rd}] the parallel prompt pool ({len(pool)}) is used up: prompts repeat from earlier rounds")
        groups = build_groups([pool[i] for i in idx], s.languages, s.system)

        def gen_stage():
            g = dataclasses.replace(s.generation, seed=s.generation.seed + 1000 * r + s.seed)
            samples = sample_groups(models.model(pol), tok, [x["prompt"] for x in groups], s.k, g)
            recs = [candidates_record(x["prompt"], smp, drop_truncated=not s.keep_truncated,
                                      score_prompt=x["score_prompt"], language=x["language"], id=x["id"])
                    for x, smp in zip(groups, samples)]
            path = run.file(rd, "candidates.jsonl")
            write_jsonl(path, recs)
            return {"prompts": len(recs)}, [path]

        def score_stage():
            reward = ImplicitReward(models.model(scorer[0]), models.model(scorer[1]), tok, batch_size=s.score_batch_size)
            path = run.file(rd, "scored.jsonl")
            write_jsonl(path, score_groups(reward, read_jsonl(run.file(rd, "candidates.jsonl")), score_key="score_prompt"))
            return {}, [path]

        def pair_stage():
            scored = read_jsonl(run.file(rd, "scored.jsonl"))
            pairs, per_lang = [], {}
            for lang in s.languages:
                recs, st = pair_groups([g for g in scored if g["language"] == lang])
                pairs += recs
                per_lang[lang] = st
            path = run.file(rd, "train.jsonl")
            write_jsonl(path, pairs)
            return {"pairs": len(pairs), "languages": per_lang}, [path]

        run.run(f"{rd}/generate", gen_stage)
        run.run(f"{rd}/score", score_stage)
        pst = run.run(f"{rd}/pairs", pair_stage)
        models.keep()
        if pst["pairs"] == 0:
            raise ValueError(f"[{rd}] no pairs in any language: every prompt was skipped; raise --max-new-tokens or "
                             "K, or pass --keep-truncated")
        t = train_stage(run, f"{rd}/train", s.train, model=pol, data=run.file(rd, "train.jsonl"),
                        n_pairs=pst["pairs"], log=log)
        new = os.path.join(run.path, rd, "train", "final")
        table_rows.append({"round": r, **pst, "steps": t.get("global_step"), "eval": evaluate(rd, new)})
        chain.append((new, pol))
        models.keep()

    secs = run.seconds()
    for row in table_rows:
        rd = f"round{row['round']}/"
        row["seconds"] = round(sum(v for k, v in secs.items() if k.startswith(rd) or k == f"eval/round{row['round']}"), 1)
    summary = {"rounds": table_rows, "final_policy": chain[-1][0], "english_reward": [pi0, ref0], "stage_seconds": secs}
    write_json(os.path.join(run.path, "summary.json"), summary)
    log(summary_table(table_rows, s.languages))
    log(f"final policy: {chain[-1][0]}")
    return summary


def summary_table(rows: list[dict], languages) -> str:
    out = []
    for row in rows:
        ev = row.get("eval") or {}
        per = row.get("languages", {})
        cells = []
        for lang in languages:
            st = per.get(lang)
            cells.append(None if st is None else f"{st['pairs']} / a={st['alpha'] if st['alpha'] is not None else '-'}")
        skipped = sum(st["skipped_no_valid"] + st["skipped_one_valid"] + st["skipped_tied"] for st in per.values()) if per else None
        out.append([row["round"], *cells, skipped, row.get("steps"), ev.get("mean_reward"),
                    ev.get("win_rate_vs_round0"), ev.get("truncated"), row.get("seconds")])
    return table(["round", *[f"{c}: pairs / alpha" for c in languages], "skipped prompts", "train steps",
                  "held-out reward", "win vs round 0", "held-out truncated", "stage s"], out,
                 title="cross-lingual (held-out: greedy answers to unseen target-language prompts, scored by the "
                       "starting English implicit reward under the prefixed English instruction)")
