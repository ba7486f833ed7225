"""Answer files for `rdpo-fast eval`, and pairing model A's answers with model B's.

An answer file is what `rdpo-fast generate` writes or an AlpacaEval model-outputs / reference file: records
with "instruction" and "output" (plus optional "generator", "dataset", "id", "task", "language"). Two
files are paired by instruction, as AlpacaEval pairs them; a prompt one side lacks, a record without an
answer, a repeated instruction, a task the two sides disagree on: each is an error naming file and line.
"""
from __future__ import annotations

from dataclasses import dataclass

from .records import RecordError, read_records
from .tasks import TASKS


@dataclass
class Answer:
    instruction: str
    output: str
    generator: str
    source: str  # file:line
    id: str | None = None
    task: str | None = None
    language: str | None = None
    dataset: str | None = None
    finished: bool | None = None


@dataclass
class Pair:
    """One prompt with the model's and the baseline's answers."""
    model: Answer
    baseline: Answer

    @property
    def instruction(self) -> str:
        return self.model.instruction

    @property
    def task(self) -> str | None:
        return self.model.task or self.baseline.task

    @property
    def language(self) -> str | None:
        return self.model.language or self.baseline.language

    @property
    def id(self) -> str:
        return self.model.id or self.baseline.id or self.model.source


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def read_answers(path: str, *, task: str | None = None) -> list[Answer]:
    """The answers of one file; `task` applies to records that name none."""
    out, seen = [], {}
    for line, rec in read_records(path, "answers"):
        where = f"{path}:{line}"
        inst = rec.get("instruction")
        if inst is None and isinstance(rec.get("prompt"), str):
            inst = rec["prompt"]
        if not isinstance(inst, str) or not inst.strip():
            raise RecordError(f"{where}: a record needs a non-empty 'instruction' (the prompt it answers)")
        if "output" not in rec or rec["output"] is None:
            raise RecordError(f"{where}: no answer: the record has no 'output' for the prompt {_clip(inst)!r}")
        if not isinstance(rec["output"], str):
            raise RecordError(f"{where}: 'output' must be a string, got {type(rec['output']).__name__}")
        if inst in seen:
            raise RecordError(f"{where}: the prompt {_clip(inst)!r} is answered twice (also line {seen[inst]}); "
                              "each prompt must have exactly one answer")
        seen[inst] = line
        t = rec.get("task", task)
        if t is not None and t not in TASKS and t != "persona":
            raise RecordError(f"{where}: unknown task {t!r}; known: {', '.join(TASKS)}")
        out.append(Answer(inst, rec["output"], str(rec.get("generator") or path), where, id=rec.get("id"),
                          task=t, language=rec.get("language"), dataset=rec.get("dataset"),
                          finished=rec.get("finished")))
    return out


def pair_answers(model: list[Answer], baseline: list[Answer], model_path: str, baseline_path: str) -> list[Pair]:
    """Model and baseline answers of the same prompts, in the model file's order."""
    by_inst = {b.instruction: b for b in baseline}
    pairs = []
    for a in model:
        b = by_inst.get(a.instruction)
        if b is None:
            raise RecordError(f"{a.source}: the prompt {_clip(a.instruction)!r} has no answer in {baseline_path}; "
                              "the two files must answer the same prompt set")
        for field in ("task", "language"):
            va, vb = getattr(a, field), getattr(b, field)
            if va is not None and vb is not None and va != vb:
                raise RecordError(f"{a.source}: {field} {va!r} differs from {b.source}'s {vb!r} for the same prompt")
        pairs.append(Pair(a, b))
    asked = {a.instruction for a in model}
    extra = [b for b in baseline if b.instruction not in asked]
    if extra:
        raise RecordError(f"{extra[0].source}: the prompt {_clip(extra[0].instruction)!r} has no answer in "
                          f"{model_path} ({len(extra)} such prompt(s)); the two files must answer the same prompt set")
    return pairs
