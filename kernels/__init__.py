"""Triton device code of rdpo_fast (installed as rdpo_fast.kernels): @triton.jit kernels and the thin
launch helpers that pick block sizes. No autograd and no validation live here: see rdpo_fast.ops."""
