"""Language-model plumbing shared by the pipelines and the evaluation: chat rendering (chat.py) and
batched sampling through transformers (generation.py) or vLLM (vllm.py)."""
