"""Benchmarks: LR probe and MLP vs zero-shot MedSigLIP vs a selective-unfreeze fine-tune."""
