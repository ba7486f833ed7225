"""The module paths of the flat layout before the packages (2026-12), kept importable: `import
rdpo_fast.fused_loss` gives rdpo_fast.losses.fused itself (the same module object, so attributes and
monkeypatches are shared), and pickles or user code naming an old path keep working. Nothing in the
package imports through these names; each new module is imported only when its old name is."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

OLD_PATHS = {
    "rdpo_fast._checks": "rdpo_fast.ops.checks",
    "rdpo_fast.backend": "rdpo_fast.ops.backend",
    "rdpo_fast.epilogue": "rdpo_fast.ops.epilogue",
    "rdpo_fast.preference": "rdpo_fast.losses.head",
    "rdpo_fast.loss_table": "rdpo_fast.losses.table",
    "rdpo_fast.fused_loss": "rdpo_fast.losses.fused",
    "rdpo_fast.metrics": "rdpo_fast.losses.metrics",
    "rdpo_fast.losses._dropin": "rdpo_fast.losses.dropin",
    "rdpo_fast.reference": "rdpo_fast.oracle",
    "rdpo_fast.reference.logprobs": "rdpo_fast.oracle.logprobs",
    "rdpo_fast.reference.preference": "rdpo_fast.oracle.preference",
    "rdpo_fast.reference.fused": "rdpo_fast.oracle.fused",
    "rdpo_fast.modeling": "rdpo_fast.models.loading",
    "rdpo_fast.model_sources": "rdpo_fast.models.sources",
    "rdpo_fast.data_sources": "rdpo_fast.data.sources",
    "rdpo_fast.data_files": "rdpo_fast.data.shipped",
    "rdpo_fast.config": "rdpo_fast.training.config",
    "rdpo_fast.train_flags": "rdpo_fast.training.flags",
    "rdpo_fast.trl_names": "rdpo_fast.training.trl_names",
    "rdpo_fast.train": "rdpo_fast.training.loop",
    "rdpo_fast.optim": "rdpo_fast.training.optim",
    "rdpo_fast.checkpoint": "rdpo_fast.training.checkpoint",
    "rdpo_fast.run_dir": "rdpo_fast.training.run_dir",
    "rdpo_fast.reporting": "rdpo_fast.training.reporting",
    "rdpo_fast.plot": "rdpo_fast.training.plot",
    "rdpo_fast.fault_points": "rdpo_fast.training.fault_points",
    "rdpo_fast.typed": "rdpo_fast.training.typed",
    "rdpo_fast.textfile": "rdpo_fast.io",
    "rdpo_fast.pipelines.chat": "rdpo_fast.lm.chat",
    "rdpo_fast.pipelines.generation": "rdpo_fast.lm.generation",
    "rdpo_fast.pipelines.vllm_generation": "rdpo_fast.lm.vllm",
    "rdpo_fast.pipelines.templates": "rdpo_fast.data.templates",
    "rdpo_fast.pipelines.report": "rdpo_fast.io",
    "rdpo_fast.pipelines.judge": "rdpo_fast.judges.generative",
    "rdpo_fast.evaluation.judge": "rdpo_fast.judges.probability",
    "rdpo_fast.evaluation.labelprobs": "rdpo_fast.judges.labelprobs",
    "rdpo_fast.evaluation.rubrics": "rdpo_fast.judges.rubrics",
    "rdpo_fast.evaluation.scoring": "rdpo_fast.pipelines.soft_labels",
    "rdpo_fast.integrations.trl_cpo": "rdpo_fast.integrations.trl.cpo",
}
# rdpo_fast.ops, rdpo_fast.data and rdpo_fast.integrations.trl were modules and are packages now: their
# __init__ re-exports what the modules exported.


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in OLD_PATHS:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(OLD_PATHS[spec.name])

    def exec_module(self, module):
        pass  # the module is the new one, already executed


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # before the path finders: an old folder left in a checkout must not win
