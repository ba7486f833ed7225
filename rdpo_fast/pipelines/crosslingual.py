"""Implicit cross-lingual rewarding (Yang et al. 2025; SPEC section 5).

An English DPO model and its reference define the implicit reward r = log pi(y|x) - log pi_ref(y|x).
Responses to a target-language instruction are scored under the *English* instruction with the prefix
"Please answer the following instruction using only {language}, ...", so the English preferences
judge them; English itself (one of the languages, as upstream) is scored under its own instruction
without the prefix. Per language: K samples per prompt from the current policy (truncated samples are
kept by default, as upstream keeps them), a length-controlled pair (alpha sweep per language, lengths
being comparable only within a language) whose prompt is the target-language instruction. All
languages' pairs train DPO + NLL on chosen from the current policy (which is also the DPO reference);
the result is the next round's policy. Later rounds score with a selectable reward pair
(driver.REWARD_PAIRS: (pi_{r-1}, ref_{r-1}), (pi_0, ref_0) or (pi_{r-1}, ref_0)). The rounds run
through driver.RoundDriver.

Held-out implicit measure (per round): greedy answers of each round's policy to held-out parallel
prompts (never trained on), scored by the starting English reward (pi_0, ref_0): their mean reward and
the win rate against round 0's answers. That is the training signal's own view; the run ends with the
external one (final_eval.py): the final policy against pi_0 on the evaluation's multilingual set in the
run's languages, by a separate judge, with the share of answers in the requested language.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rdpo_fast.data.shipped import default_path
from rdpo_fast.data.templates import PARALLEL_PROMPTS, read_parallel
from rdpo_fast.io import table, write_jsonl
from rdpo_fast.lm.chat import user_turn
from rdpo_fast.models import loading as modeling

from .dice import offline_records
from .driver import RoundDriver, RoundSettings, round_indices, skipped
from .rounds import TrainSettings, pair_groups
from .stages import read_stage_records

PREFIX = ("Please answer the following instruction using only {language}, unless explicitly instructed to "
          "respond in a different language.\n\n")
LANGUAGE_NAMES = {
    "ar": "Arabic", "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "eu": "Basque", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi",
    "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch",
    "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sv": "Swedish",
    "sw": "Swahili", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}


ENGLISH = "en"


def language_prefix(code: str) -> str:
    if code not in LANGUAGE_NAMES:
        raise ValueError(f"unknown language code {code!r}; known: {', '.join(sorted(LANGUAGE_NAMES))}")
    return PREFIX.format(language=LANGUAGE_NAMES[code])


def scoring_instruction(code: str, english: str) -> str:
    """The English instruction a response in language `code` is scored under: prefixed with 'answer
    using only <language>' for other languages; English responses are scored without it (upstream)."""
    return english if code == ENGLISH else language_prefix(code) + english


def _default_train() -> TrainSettings:
    return TrainSettings(nll_alpha=1.0)


@dataclass
class CrossLingualSettings(RoundSettings):
    parallel: str | None = None  # parallel prompt JSONL; default: the shipped set
    languages: tuple[str, ...] = ("en", "es", "fr", "de", "it")
    eval_prompts: int = 4  # held-out prompts per language: the last rows of the parallel set
    # Overrides of the shared defaults:
    prompts_per_round: int = 8  # per language
    keep_truncated: bool = True  # upstream scores and pairs every sample
    train: TrainSettings = field(default_factory=_default_train)

    def validate(self) -> CrossLingualSettings:
        super().validate()
        if self.eval_prompts < 0:
            raise ValueError(f"eval_prompts must be >= 0, got {self.eval_prompts}")
        if not self.languages:
            raise ValueError("give at least one language")
        if len(set(self.languages)) != len(self.languages):
            raise ValueError(f"languages repeat: {list(self.languages)}")
        for code in self.languages:
            language_prefix(code)
        return self

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["languages"] = list(self.languages)
        return d


def build_groups(rows: list[dict], languages, system) -> list[dict]:
    """Per (language, prompt): the target-language chat prompt and the English scoring prompt."""
    return [{"prompt": user_turn(row[lang], system=system),
             "score_prompt": user_turn(scoring_instruction(lang, row["en"]), system=system),
             "language": lang, "id": row["id"]}
            for lang in languages for row in rows]


class CrossLingualRounds(RoundDriver):
    name = "crosslingual"

    def prepare(self):
        s = self.s
        rows = read_parallel(s.parallel or PARALLEL_PROMPTS)
        missing = [c for c in s.languages if c not in rows[0]]
        if missing:
            raise ValueError(f"languages {missing} are not in the parallel prompt file (it has "
                             f"{sorted(k for k in rows[0] if k != 'id')}); choose --languages or give --parallel")
        if s.eval_prompts >= len(rows):
            raise ValueError(f"eval_prompts={s.eval_prompts} leaves none of the {len(rows)} parallel prompts for "
                             "training")
        n = len(rows) - s.eval_prompts
        self.held_rows, self.pool = rows[n:], rows[:n]
        self.offline = [] if self.given_dpo() else offline_records(s.offline or default_path("train"))
        modeling.resolve(s.policy)
        if s.reference:
            modeling.resolve(s.reference)
        self.held = build_groups(self.held_rows, s.languages, s.system)

    def round0_records(self):
        return self.offline[: self.s.init_pairs]

    def round0_train(self):
        return dataclasses.replace(self.s.train, nll_alpha=0.0)  # the English model is plain DPO

    def round0_note(self):
        return "English DPO on offline pairs"

    def round_groups(self, r):
        s = self.s
        idx, wrapped = round_indices(len(self.pool), r, s.prompts_per_round, s.prompt_pool)
        if wrapped and s.prompt_pool == "fresh":
            self.log(f"[round{r}] the parallel prompt pool ({len(self.pool)}) is used up: prompts repeat from "
                     "earlier rounds")
        return build_groups([self.pool[i] for i in idx], s.languages, s.system)

    def pair(self, scored):
        s = self.s
        pairs, per_lang = [], {}
        for lang in s.languages:
            recs, st = pair_groups([g for g in scored if g["language"] == lang], min_valid=s.needed_valid,
                                   grid=self.grid(), alpha_rule=s.alpha_rule)
            pairs += recs
            per_lang[lang] = st
        total = {k: sum(st[k] for st in per_lang.values())
                 for k in ("skipped_no_valid", "skipped_one_valid", "skipped_few_valid", "skipped_tied")}
        return pairs, {"pairs": len(pairs), "min_valid": s.needed_valid, **total, "languages": per_lang}

    def alpha_report(self, rd, st):
        parts = [f"{lang} {x['alpha']:g} ({x['length_diff_alpha0']:+.0f} -> {x['length_diff']:+.0f})"
                 for lang, x in st["languages"].items() if x.get("length_diff") is not None]
        if parts:
            self.log(f"[{rd}] alpha per language ({self.s.alpha_rule}; mean len(chosen) - len(rejected), characters, "
                     f"before -> after): " + ", ".join(parts))

    def evaluate(self, name, path):
        """Greedy answers of `path` to the held-out prompts, scored by the starting English reward."""
        if not self.held:
            return None
        run, held = self.run_dir, self.held
        pi0, ref0 = self.start

        def go():
            g = dataclasses.replace(self.s.generation, temperature=0.0)
            answers = [out[0] for out in self.generate(path, [h["prompt"] for h in held], num_samples=1, settings=g,
                                                       desc=f"held-out answers ({name})")]
            reward = self.reward(pi0, ref0)
            sc = reward([h["score_prompt"] for h in held], [a.text.strip() for a in answers])
            recs = [{"language": h["language"], "id": h["id"], "answer": a.text.strip(), "truncated": a.truncated,
                     "reward": float(v)} for h, a, v in zip(held, answers, sc.reward)]
            p = run.file("eval", f"{name}.jsonl")
            write_jsonl(p, recs)
            st = {"mean_reward": sum(x["reward"] for x in recs) / len(recs),
                  "truncated": sum(x["truncated"] for x in recs), "prompts": len(recs)}
            if name != "round0":
                before = read_stage_records(run.file("eval", "round0.jsonl"))
                wins = [1.0 if a["reward"] > b["reward"] else 0.5 if a["reward"] == b["reward"] else 0.0
                        for a, b in zip(recs, before)]
                st["win_rate_vs_round0"] = sum(wins) / len(wins)
            return st, [p]

        return run.run(f"eval/{name}", go)

    def final_eval_prompts(self):
        from .final_eval import multilingual_languages

        fe = self.final_eval_settings
        if fe is not None and (fe.prompts or not fe.enabled):
            return fe.prompts or "multilingual", list(self.s.languages)
        return "multilingual", multilingual_languages(self.s.languages)

    def summary_extra(self, chain):
        return {"english_reward": list(chain[0])}

    def summary_table(self, rows):
        return summary_table(rows, self.s.languages)


def run_crosslingual(s: CrossLingualSettings, output_dir: str, *, overwrite: bool = False, final_eval=None,
                     log=print) -> dict:
    return CrossLingualRounds(s, output_dir, overwrite=overwrite, final_eval=final_eval, log=log).run()


def summary_table(rows: list[dict], languages) -> str:
    out = []
    for row in rows:
        ev = row.get("eval") or {}
        per = row.get("languages", {})
        cells = []
        for lang in languages:
            st = per.get(lang)
            cells.append(None if st is None else f"{st['pairs']} / a={st['alpha'] if st['alpha'] is not None else '-'}")
        out.append([row["round"], *cells, skipped(row) if per else None, row.get("steps"), ev.get("mean_reward"),
                    ev.get("win_rate_vs_round0"), ev.get("truncated"), row.get("seconds")])
    return table(["round", *[f"{c}: pairs / alpha" for c in languages], "skipped prompts", "train steps",
                  "implicit held-out reward", "implicit win vs round 0", "held-out truncated", "stage s"],
                 out, title="cross-lingual (implicit: greedy answers to unseen target-language prompts, scored by the "
                       "starting English implicit reward under the English instruction, prefixed for other "
                       "languages)")
