"""Task templates of the self-critique chain, and the shipped prompt files.

A template names a task's fault and goal, which complete the two follow-up requests of the chain
(SPEC section 5): "Identify specific ways in which your previous answer is <fault>." and "Rewrite your
original response using the critique to be <goal>.". Templates for safety, role-play and sycophancy
ship in prompt_files/tasks.yaml; a user file in the same format adds tasks or replaces shipped ones.
Unknown fields, missing fields and placeholders that do not fit are errors, not silent defaults.

A template also carries its judge's scale: the rubric, the integer score range, the soft-label
temperature suited to that range (judge_scales.py), and optionally a target score (the judge's
score then counts by its closeness to the target, e.g. neutral sentiment).

The safety task's jailbreak framings used for TRAINING are in prompt_files/safety_wrappers_train.jsonl
(TRAIN_JAILBREAK_WRAPPERS); held-out framings for evaluation live with the evaluation sets and must
not overlap these.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files

from rdpo_fast import io as textfile

PROMPT_FILES = files(__package__).joinpath("prompt_files")
SHIPPED_TEMPLATES = str(PROMPT_FILES.joinpath("tasks.yaml"))
PARALLEL_PROMPTS = str(PROMPT_FILES.joinpath("parallel.jsonl"))
TRAIN_JAILBREAK_WRAPPERS = str(PROMPT_FILES.joinpath("safety_wrappers_train.jsonl"))
CRITIQUE_REQUEST = "Identify specific ways in which your previous answer is {fault}."
REVISION_REQUEST = ("Rewrite your original response using the critique to be {goal}. "
                    "Reply with the rewritten response only.")
_REQUIRED = ("fault", "goal")
_OPTIONAL = ("description", "system", "wrappers", "prompts", "judge_rubric", "critique_request", "revision_request",
             "score_range", "score_temperature", "score_target", "pairwise_criteria")
_STRINGS = ("description", "system", "prompts", "judge_rubric", "critique_request", "revision_request",
            "pairwise_criteria")


class TemplateError(ValueError):
    """A bad template file or an unknown task."""


@dataclass(frozen=True)
class TaskTemplate:
    name: str
    fault: str
    goal: str
    description: str = ""
    system: str | None = None
    wrappers: tuple[str, ...] = ()
    prompts: str | None = None  # absolute path of the task's default prompt file
    judge_rubric: str | None = None
    critique_request: str = CRITIQUE_REQUEST
    revision_request: str = REVISION_REQUEST
    score_range: tuple[int, int] | None = None  # the judge's integer scale; None: the judge's default
    score_temperature: float | None = None  # soft-label T for that scale (judge_scales.scale_temperature)
    score_target: int | None = None  # the judge's score counts as -|score - target| (closeness to it)
    pairwise_criteria: str | None = None  # what "better" means when a pairwise judge compares two answers

    def wrap(self, prompt: str, index: int) -> str:
        """The user message for prompt number `index`: prompt i takes wrapper i mod len(wrappers)."""
        if not self.wrappers:
            return prompt
        return self.wrappers[index % len(self.wrappers)].replace("{prompt}", prompt)

    def _fill(self, text: str) -> str:
        return text.replace("{system}", self.system or "")

    def critique(self) -> str:
        return self.critique_request.replace("{fault}", self._fill(self.fault))

    def revision(self) -> str:
        return self.revision_request.replace("{goal}", self._fill(self.goal))


def _load_file(path: str) -> dict[str, TaskTemplate]:
    if not os.path.isfile(path):
        raise TemplateError(f"template file not found: {path}")
    doc = textfile.parse_structured(path, "template file", TemplateError)
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict) or not doc["tasks"]:
        raise TemplateError(f"template file {path}: expected a mapping with a non-empty 'tasks' mapping of "
                            "task name to template")
    base = os.path.dirname(os.path.abspath(path))
    return {str(name): _template(str(name), spec, path, base) for name, spec in doc["tasks"].items()}


def _template(name, spec, path, base) -> TaskTemplate:
    where = f"template file {path}, task {name!r}"
    if not isinstance(spec, dict):
        raise TemplateError(f"{where}: expected a mapping of fields")
    unknown = sorted(set(spec) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise TemplateError(f"{where}: unknown field(s) {unknown}; known: {list(_REQUIRED + _OPTIONAL)}")
    for key in _REQUIRED:
        if not isinstance(spec.get(key), str) or not spec[key].strip():
            raise TemplateError(f"{where}: field {key!r} (a non-empty string) is required")
    for key in _STRINGS:
        if key in spec and spec[key] is not None and not isinstance(spec[key], str):
            raise TemplateError(f"{where}: field {key!r} must be a string")
    wrappers = spec.get("wrappers") or []
    if isinstance(wrappers, str):  # a file of wrappers beside the template file
        wrappers = read_wrappers(os.path.join(base, wrappers))
    if not isinstance(wrappers, list) or not all(isinstance(w, str) and w.count("{prompt}") == 1 for w in wrappers):
        raise TemplateError(f"{where}: 'wrappers' must be a list of strings that each contain {{prompt}} once, "
                            "or the name of a JSONL file of {\"wrapper\": ...} records")
    if "{system}" in spec["fault"] + spec["goal"] and not spec.get("system"):
        raise TemplateError(f"{where}: fault/goal use {{system}} but the task has no system message")
    lo_hi = spec.get("score_range")
    if lo_hi is not None:
        if (not isinstance(lo_hi, list) or len(lo_hi) != 2 or not all(type(v) is int for v in lo_hi)
                or lo_hi[0] >= lo_hi[1]):
            raise TemplateError(f"{where}: score_range must be two integers [lo, hi] with lo < hi, got {lo_hi!r}")
        lo_hi = (lo_hi[0], lo_hi[1])
    temp = spec.get("score_temperature")
    if temp is not None and (isinstance(temp, bool) or not isinstance(temp, (int, float)) or temp <= 0):
        raise TemplateError(f"{where}: score_temperature must be a number > 0, got {temp!r}")
    target = spec.get("score_target")
    if target is not None:
        if type(target) is not int or lo_hi is None or not lo_hi[0] <= target <= lo_hi[1]:
            raise TemplateError(f"{where}: score_target must be an integer inside score_range, got {target!r}")
    for key, hole in (("critique_request", "{fault}"), ("revision_request", "{goal}")):
        if key in spec and hole not in spec[key]:
            raise TemplateError(f"{where}: {key} must contain {hole}")
    prompts = spec.get("prompts")
    if prompts:
        prompts = os.path.join(base, prompts)
        if not os.path.isfile(prompts):
            raise TemplateError(f"{where}: prompt file not found: {prompts}")
    return TaskTemplate(name=name, fault=spec["fault"].strip(), goal=spec["goal"].strip(),
                        description=spec.get("description") or "", system=spec.get("system") or None,
                        wrappers=tuple(wrappers), prompts=prompts, judge_rubric=spec.get("judge_rubric"),
                        critique_request=spec.get("critique_request", CRITIQUE_REQUEST),
                        revision_request=spec.get("revision_request", REVISION_REQUEST),
                        score_range=lo_hi, score_temperature=None if temp is None else float(temp),
                        score_target=target, pairwise_criteria=spec.get("pairwise_criteria"))


def read_wrappers(path: str) -> list[str]:
    """Jailbreak-style framings from a JSONL file, one {"wrapper": "... {prompt} ..."} per line."""
    if not os.path.isfile(path):
        raise TemplateError(f"wrapper file not found: {path}")
    out = []
    for lineno, rec in textfile.read_jsonl(path, TemplateError):
        w = rec.get("wrapper") if isinstance(rec, dict) else None
        if not isinstance(w, str) or w.count("{prompt}") != 1:
            raise TemplateError(f"{path}:{lineno}: expected {{\"wrapper\": text holding {{prompt}} once}}")
        out.append(w)
    if not out:
        raise TemplateError(f"{path}: no wrappers")
    return out


def train_jailbreak_wrappers() -> list[str]:
    """The safety task's training framings (never the held-out evaluation ones)."""
    return read_wrappers(TRAIN_JAILBREAK_WRAPPERS)


def load_templates(user_file: str | None = None) -> dict[str, TaskTemplate]:
    """The shipped templates, updated with a user file's (a user task of a shipped name replaces it)."""
    templates = _load_file(SHIPPED_TEMPLATES)
    if user_file:
        templates.update(_load_file(user_file))
    return templates


def get_template(name: str, user_file: str | None = None) -> TaskTemplate:
    templates = load_templates(user_file)
    if name not in templates:
        raise TemplateError(f"unknown task template {name!r}; known: {', '.join(sorted(templates))}"
                            + ("" if user_file else " (add your own with --template-file)"))
    return templates[name]


def read_prompts(path: str) -> list[str]:
    """Prompts from a file: JSONL with a string field "prompt" per line, or plain text, one per line
    (.txt). A JSONL record may carry a "persona" (role-play): the persona is injected into the user
    turn, above the question. Blank lines are skipped; an empty file is an error."""
    if not os.path.isfile(path):
        raise TemplateError(f"prompt file not found: {path}")
    if path.endswith(".txt"):
        out = [line.strip() for _, line in textfile.lines(path) if line.strip()]
    else:
        out = []
        for lineno, rec in textfile.read_jsonl(path, TemplateError, "; prompt files are JSONL with a 'prompt' "
                                               "field, or .txt with one prompt per line"):
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
                raise TemplateError(f"{path}:{lineno}: expected an object with a non-empty string 'prompt'")
            persona = rec.get("persona")
            if persona is not None and (not isinstance(persona, str) or not persona.strip()):
                raise TemplateError(f"{path}:{lineno}: 'persona' must be a non-empty string")
            out.append(with_persona(rec["prompt"].strip(), persona))
    if not out:
        raise TemplateError(f"{path}: no prompts")
    return out


def with_persona(prompt: str, persona: str | None) -> str:
    """The user turn of a role-play prompt: the persona description, then the question."""
    return prompt if not persona else f"{persona.strip()}\n\n{prompt}"


def task_prompts(task: TaskTemplate) -> list[str]:
    if not task.prompts:
        raise TemplateError(f"task {task.name!r} has no default prompt file; give --prompts FILE")
    return read_prompts(task.prompts)


def shipped_task_prompts() -> list[str]:
    """Every shipped task's prompts, interleaved (safety, role-play, sycophancy, safety, ...), so any
    first n prompts mix the tasks."""
    lists = [task_prompts(t) for t in _load_file(SHIPPED_TEMPLATES).values()]
    return [p for group in zip(*lists) for p in group]


def read_parallel(path: str = PARALLEL_PROMPTS) -> list[dict]:
    """Records {"id", "<lang>": text, ...} of a parallel prompt set; every record has the same languages,
    English ("en") among them."""
    if not os.path.isfile(path):
        raise TemplateError(f"parallel prompt file not found: {path}")
    rows, langs = [], None
    for lineno, rec in textfile.read_jsonl(path, TemplateError):
        if not isinstance(rec, dict) or not all(isinstance(v, str) and v.strip() for v in rec.values()):
            raise TemplateError(f"{path}:{lineno}: expected an object of non-empty strings")
        keys = sorted(k for k in rec if k != "id")
        if langs is None:
            langs = keys
        elif keys != langs:
            raise TemplateError(f"{path}:{lineno}: languages {keys} differ from the first record's {langs}")
        rows.append({"id": rec.get("id", f"line{lineno}"), **{k: rec[k].strip() for k in keys}})
    if not rows:
        raise TemplateError(f"{path}: no prompts")
    if "en" not in langs:
        raise TemplateError(f"{path}: the parallel set needs English ('en') prompts, the instructions the "
                            f"English reward model scores under; languages found: {langs}")
    return rows
