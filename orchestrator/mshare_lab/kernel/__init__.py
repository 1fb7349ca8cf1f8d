"""Kernels: built from source plus patches, or fetched from the distribution; content-addressed artifacts."""
