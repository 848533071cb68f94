"""Learning: labelled examples from the stream, the ranker, the trainer and its worker, the
model registry, the live model that serves, and the LoRA query tower."""
