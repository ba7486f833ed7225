"""The autograd ops over the Triton kernels: per-token log-probs from hidden states and the lm_head weight
(logprobs.py), the chunk schedule's workspace budget, row compaction and GEMM helpers (schedule.py), the
per-chunk epilogue with its torch twin (epilogue.py), the in-place gradient scaling of the fused losses'
backward (scale.py), the backend choice (backend.py), the input checks (checks.py), and the
vocabulary- and sequence-parallel layouts, collectives and combination maths (parallel.py)."""
from .logprobs import linear_logprobs, logprobs, sequence_logprobs
from .schedule import workspace_bytes

__all__ = ["linear_logprobs", "logprobs", "sequence_logprobs", "workspace_bytes"]
