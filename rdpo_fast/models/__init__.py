"""Model loading: local Hugging Face directories, GGUF files, Hub ids and the embedded SmolLM2 default
(sources.py, which also owns ModelError), and what the loop and the losses read from a model
(loading.py: hidden states, the lm_head weight, the logit transform, LoRA, layer freezing)."""
