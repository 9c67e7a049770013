"""PyTorch backend: Hugging Face models in eager mode, the reference every other runtime is checked against."""
