"""External reward scorers for preference pairs, and the soft labels made from their scores.

Three pluggable scorers (SPEC section 5), each mapping (chat prompt, response) to a number or to a
reported failure:
- JudgeScorer: an LLM judge with a rubric; the score is parsed strictly from its marked field, failed
  parses are retried and then reported (rdpo_fast.judges.generative). Never guessed.
- RewardModelScorer: a sequence-classification reward model from a local directory
  (AutoModelForSequenceClassification); its single logit is the score.
- ImplicitScorer: the implicit reward log pi(y|x) - log pi_ref(y|x) of a DPO model and its reference
  (implicit.py, forward-only fused op).
`score_records` scores chosen and rejected of every record and writes chosen_score, rejected_score and
soft_label = sigmoid((s_chosen - s_rejected) / T); a record with a failed score goes to a separate
file with the reasons, never into the training data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rdpo_fast.io import table
from rdpo_fast.judges.generative import Judge, JudgeSettings
from rdpo_fast.lm.chat import as_messages, as_text, last_user_text
from rdpo_fast.models import loading as modeling

SCORERS = ("judge", "rm", "implicit")


@dataclass
class Score:
    value: float | None
    error: str | None = None
    detail: dict = field(default_factory=dict)


class JudgeScorer:
    name = "judge"

    def __init__(self, model: str, settings: JudgeSettings | None = None, *, model_obj=None, tokenizer=None):
        modeling.resolve(model)  # a missing judge path fails here, before anything loads
        self.tokenizer = tokenizer if tokenizer is not None else modeling.load_tokenizer(model)
        self.model = model_obj if model_obj is not None else modeling.load_model(model).eval()
        self.judge = Judge(self.model, self.tokenizer, settings)

    def __call__(self, prompts, responses) -> list[Score]:
        questions = [last_user_text(p) for p in prompts]
        out = []
        for r in self.judge(questions, responses):
            detail = {"attempts": r.attempts, "answers": r.answers}
            if r.score is None:
                out.append(Score(None, f"unparsable after {r.attempts} attempt(s): " + "; ".join(r.errors), detail))
            else:
                out.append(Score(float(r.score), None, {**detail, "failed_attempts": r.errors}))
        return out


class RewardModelScorer:
    name = "rm"

    def __init__(self, path: str, *, batch_size: int = 8, max_length: int = 1024, label_index: int | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder, gguf = modeling.resolve(path)
        if gguf:
            raise ValueError(f"reward model {path}: a sequence-classification reward model must be a Hugging Face "
                             "directory (config.json + weights), not a GGUF file")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        n = self.model.config.num_labels
        if label_index is None:
            if n != 1:
                raise ValueError(f"reward model {path} has {n} output labels; give --rm-label-index to say which "
                                 "logit is the reward (a reward model usually has exactly one)")
            label_index = 0
        elif not 0 <= label_index < n:
            raise ValueError(f"--rm-label-index {label_index} is out of range for {n} labels")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            # Batched sequence classification finds each row's last token through the pad id.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.label_index, self.batch_size, self.max_length = label_index, batch_size, max_length

    def _text(self, prompt, response):
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}],
                                                      tokenize=False), None
        return "\n\n".join(m["content"] for m in prompt), response

    @torch.no_grad()
    def __call__(self, prompts, responses) -> list[Score]:
        pairs = [self._text(p, r) for p, r in zip(prompts, responses)]
        out = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i: i + self.batch_size]
            first = [a for a, _ in chunk]
            second = [b for _, b in chunk] if chunk[0][1] is not None else None
            enc = self.tokenizer(first, second, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length, add_special_tokens=second is not None)
            logits = self.model(**enc).logits[:, self.label_index].double()
            for v in logits.tolist():
                out.append(Score(v) if math.isfinite(v) else Score(None, f"reward model returned {v}"))
        return out


class ImplicitScorer:
    name = "implicit"

    def __init__(self, policy: str, reference: str, *, batch_size: int = 8, models=None):
        from .implicit import ImplicitReward

        if models is None:
            for p in (policy, reference):
                modeling.resolve(p)
            tok = modeling.load_tokenizer(policy)
            models = (modeling.load_model(policy).eval(), modeling.load_model(reference).eval(), tok)
        self.reward = ImplicitReward(models[0], models[1], models[2], batch_size=batch_size)

    def __call__(self, prompts, responses) -> list[Score]:
        s = self.reward(prompts, responses)
        return [Score(float(r), None, {"policy_logps": float(p), "reference_logps": float(q), "tokens": int(n)})
                for r, p, q, n in zip(s.reward, s.policy_logps, s.reference_logps, s.num_tokens)]


def soft_label(chosen: float, rejected: float, temperature: float) -> float:
    """p = sigmoid((s_chosen - s_rejected) / T): the probability that chosen is really preferred."""
    if temperature <= 0:
        raise ValueError(f"score temperature must be > 0, got {temperature}")
    z = (chosen - rejected) / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def score_records(records: list[dict], scorer, *, temperature: float = 1.0, sources: list[str] | None = None):
    """(scored records, failed records, stats). Each scored record is the input record plus
    chosen_score, rejected_score, soft_label; a failed one names the file line and every reason."""
    if temperature <= 0:
        raise ValueError(f"score temperature must be > 0, got {temperature}")
    prompts = [as_messages(r["prompt"]) for r in records]
    scores = scorer(prompts + prompts,
                    [as_text(r["chosen"]) for r in records] + [as_text(r["rejected"]) for r in records])
    n = len(records)
    scored, failed = [], []
    for i, rec in enumerate(records):
        c, r = scores[i], scores[n + i]
        if c.value is None or r.value is None:
            failed.append({"source": sources[i] if sources else i, "prompt": rec["prompt"],
                           "chosen_error": c.error, "rejected_error": r.error,
                           "chosen_detail": c.detail, "rejected_detail": r.detail})
            continue
        out = {k: v for k, v in rec.items() if k not in ("chosen_score", "rejected_score", "soft_label")}
        out.update(chosen_score=c.value, rejected_score=r.value,
                   soft_label=soft_label(c.value, r.value, temperature))
        scored.append(out)
    item_failures = sum(s.value is None for s in scores)
    stats = {"scorer": scorer.name, "records": n, "scored": len(scored), "failed": len(failed),
             "failed_scores": item_failures, "temperature": temperature}
    if scorer.name == "judge":
        stats["judge_attempts"] = sum(s.detail.get("attempts", 0) for s in scores)
        stats["judge_retried"] = sum(s.detail.get("attempts", 1) > 1 for s in scores)
    if scored:
        stats["mean_chosen_score"] = sum(r["chosen_score"] for r in scored) / len(scored)
        stats["mean_rejected_score"] = sum(r["rejected_score"] for r in scored) / len(scored)
        stats["mean_soft_label"] = sum(r["soft_label"] for r in scored) / len(scored)
        stats["chosen_preferred"] = sum(r["soft_label"] > 0.5 for r in scored) / len(scored)
    return scored, failed, stats


def summary_table(stats: dict) -> str:
    rows = [["records", stats["records"]], ["scored pairs", stats["scored"]],
            ["failed pairs (reported, not scored)", stats["failed"]],
            ["failed scores", stats["failed_scores"]]]
    if "judge_attempts" in stats:
        rows += [["judge calls (attempts)", stats["judge_attempts"]], ["answers retried", stats["judge_retried"]]]
    for k, label in (("mean_rejected_score", "mean score, rejected (original)"),
                     ("mean_chosen_score", "mean score, chosen (revision)"),
                     ("mean_soft_label", "mean soft label p"), ("chosen_preferred", "share with p > 0.5")):
        if k in stats:
            rows.append([label, stats[k]])
    return table(["score: " + stats["scorer"], "value"], rows)
