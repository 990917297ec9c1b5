"""Datasets and dataset metadata."""
