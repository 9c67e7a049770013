"""llama.cpp backend: a model imported from a GGUF file run as the file itself, a peer to compare against."""
