"""The benchmark suite: registry, dataset preparation, fine-tuning, linear probes and results tables."""
