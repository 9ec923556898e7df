"""Inference: the pipeline object and its tasks."""
