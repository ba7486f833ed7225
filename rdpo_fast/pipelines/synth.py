"""rDPO synthesis: the teacher's self-critique chain in one chat (SPEC section 5).

For each prompt, three turns of the same conversation, each turn batched over all prompts with the KV
cache: (1) the teacher answers; (2) asked to "identify specific ways in which your previous answer is
<fault>", it critiques; (3) asked to "rewrite your original response using the critique to be <goal>",
it revises. chosen = revision, rejected = original answer. A pair whose answer or revision is empty or
degenerate, or whose revision repeats the answer, is dropped and counted; truncated turns are counted
(and dropped with drop_truncated).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rdpo_fast import run_lock
from rdpo_fast.data.templates import TaskTemplate, read_prompts, task_prompts
from rdpo_fast.io import table, write_jsonl
from rdpo_fast.lm.chat import assistant, user_turn
from rdpo_fast.lm.generation import GenerationSettings, generate
from rdpo_fast.models import loading as modeling
from rdpo_fast.training.run_dir import check_file_writable

from . import filters


@dataclass
class SynthSettings:
    num_prompts: int | None = None  # first n prompts (None: all)
    drop_truncated: bool = False
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self):
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")


def load_prompts(task: TaskTemplate, prompts_file: str | None, n: int | None) -> list[str]:
    prompts = read_prompts(prompts_file) if prompts_file else task_prompts(task)
    return prompts[:n] if n else prompts


def synthesize(model, tokenizer, task: TaskTemplate, prompts: list[str], settings: SynthSettings):
    """(records, stats) of the chain over `prompts`."""
    g = settings.generation
    convs = [user_turn(task.wrap(p, i), system=task.system) for i, p in enumerate(prompts)]

    def turn(conversations, name, seed_offset):
        s = dataclasses.replace(g, seed=g.seed + seed_offset)
        return [out[0] for out in generate(model, tokenizer, conversations, settings=s, desc=f"synth: {name}")]

    answers = turn(convs, "answer", 0)
    crit_convs = [c + assistant(a.text) + [{"role": "user", "content": task.critique()}]
                  for c, a in zip(convs, answers)]
    critiques = turn(crit_convs, "critique", 1)
    rev_convs = [c + assistant(k.text) + [{"role": "user", "content": task.revision()}]
                 for c, k in zip(crit_convs, critiques)]
    revisions = turn(rev_convs, "revision", 2)

    records, dropped = [], {"answer": 0, "revision": 0, "unchanged": 0}
    truncated = {"answer": 0, "critique": 0, "revision": 0}
    for i, (conv, a, k, r) in enumerate(zip(convs, answers, critiques, revisions)):
        for name, s in (("answer", a), ("critique", k), ("revision", r)):
            truncated[name] += s.truncated
        bad = [name for name, s in (("answer", a), ("revision", r))
               if filters.rejection_reason(s, drop_truncated=settings.drop_truncated) is not None]
        if bad:
            dropped[bad[0]] += 1
            continue
        if r.text.strip() == a.text.strip():
            dropped["unchanged"] += 1
            continue
        records.append({
            "prompt": conv, "chosen": assistant(r.text.strip()), "rejected": assistant(a.text.strip()),
            "response": a.text, "critique": k.text, "revision": r.text, "task": task.name,
            "source_prompt": prompts[i],
            "truncated": {"response": a.truncated, "critique": k.truncated, "revision": r.truncated}})
    stats = {"task": task.name, "prompts": len(prompts), "pairs": len(records),
             "dropped_bad_answer": dropped["answer"], "dropped_bad_revision": dropped["revision"],
             "dropped_unchanged": dropped["unchanged"], **{f"truncated_{k}": v for k, v in truncated.items()}}
    return records, stats


def run_synth(*, teacher: str, task: TaskTemplate, output: str, prompts_file: str | None = None,
              settings: SynthSettings | None = None, log=print) -> dict:
    settings = settings or SynthSettings()
    prompts = load_prompts(task, prompts_file, settings.num_prompts)  # bad input fails before the model loads
    check_file_writable(output)
    modeling.resolve(teacher)
    with run_lock.lock_file(output):  # one writer of the output at a time
        tokenizer = modeling.load_tokenizer(teacher)
        model = modeling.load_model(teacher).eval()
        records, stats = synthesize(model, tokenizer, task, prompts, settings)
        write_jsonl(output, records)
    stats["output"] = output
    log(table(["synth: " + task.name, "value"], [
        ["prompts", stats["prompts"]], ["pairs made", stats["pairs"]],
        ["dropped: empty/degenerate answer", stats["dropped_bad_answer"]],
        ["dropped: empty/degenerate revision", stats["dropped_bad_revision"]],
        ["dropped: revision = answer", stats["dropped_unchanged"]],
        ["truncated answers / critiques / revisions",
         f"{stats['truncated_answer']} / {stats['truncated_critique']} / {stats['truncated_revision']}"],
        ["output", output]]))
    return stats
