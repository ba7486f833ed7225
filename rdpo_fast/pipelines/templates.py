"""Task templates of the self-critique chain, and the shipped prompt files.

A template names a task's fault and goal, which complete the two follow-up requests of the chain
(SPEC section 5): "Identify specific ways in which your previous answer is <fault>." and "Rewrite your
original response using the critique to be <goal>.". Templates for safety, role-play and sycophancy
ship in prompt_files/tasks.yaml; a user file in the same format adds tasks or replaces shipped ones.
Unknown fields, missing fields and placeholders that do not fit are errors, not silent defaults.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from importlib.resources import files

from rdpo_fast import textfile

PROMPT_FILES = files(__package__).joinpath("prompt_files")
SHIPPED_TEMPLATES = str(PROMPT_FILES.joinpath("tasks.yaml"))
PARALLEL_PROMPTS = str(PROMPT_FILES.joinpath("parallel.jsonl"))
CRITIQUE_REQUEST = "Identify specific ways in which your previous answer is {fault}."
REVISION_REQUEST = ("Rewrite your original response using the critique to be {goal}. "
                    "Reply with the rewritten response only.")
_REQUIRED = ("fault", "goal")
_OPTIONAL = ("description", "system", "wrappers", "prompts", "judge_rubric", "critique_request", "revision_request")


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

    def wrap(self, prompt: str, index: int) -> str:
        """The user message for prompt number `index`: prompt i takes wrapper i mod len(wrappers)."""
        if not self.wrappers:
            return prompt
        return self.wrappers[index % len(self.wrappers)].replace("{prompt}", prompt)

    def critique(self) -> str:
        return self.critique_request.replace("{fault}", self.fault)

    def revision(self) -> str:
        return self.revision_request.replace("{goal}", self.goal)


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
    for key in _OPTIONAL:
        if key != "wrappers" and key in spec and spec[key] is not None and not isinstance(spec[key], str):
            raise TemplateError(f"{where}: field {key!r} must be a string")
    wrappers = spec.get("wrappers") or []
    if not isinstance(wrappers, list) or not all(isinstance(w, str) and w.count("{prompt}") == 1 for w in wrappers):
        raise TemplateError(f"{where}: 'wrappers' must be a list of strings that each contain {{prompt}} once")
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
                        revision_request=spec.get("revision_request", REVISION_REQUEST))


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
    (.txt). Blank lines are skipped; an empty file is an error."""
    if not os.path.isfile(path):
        raise TemplateError(f"prompt file not found: {path}")
    out = []
    with contextlib.closing(textfile.lines(path)) as f:  # non-UTF-8 bytes: an error naming file and line
        for lineno, line in f:
            if not line.strip():
                continue
            if path.endswith(".txt"):
                out.append(line.strip())
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TemplateError(f"{path}:{lineno}: malformed JSON ({e.msg}); prompt files are JSONL with a "
                                    "'prompt' field, or .txt with one prompt per line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
                raise TemplateError(f"{path}:{lineno}: expected an object with a non-empty string 'prompt'")
            out.append(rec["prompt"].strip())
    if not out:
        raise TemplateError(f"{path}: no prompts")
    return out


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
    with contextlib.closing(textfile.lines(path)) as f:  # non-UTF-8 bytes: an error naming file and line
        for lineno, line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TemplateError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
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
