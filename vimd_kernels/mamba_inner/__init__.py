"""Mamba mixer bodies: ``reference.py`` composes the references; a backend may add a fused ``core``."""
