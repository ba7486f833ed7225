"""Language-model plumbing shared by the judges, the evaluation and the pipelines: chat rendering
(chat.py), loading a model for inference (inference.py), and batched sampling through transformers
(generation.py) or vLLM (vllm.py)."""
