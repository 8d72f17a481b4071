"""Mamba mixer paths: ``body.py`` is the mixer math, ``reference.py`` composes it from the
references, ``fused.py`` is the recompute mixer op (``vimd::mixer_fwd/bwd``) that every other
backend runs, both ViM directions in one op."""
