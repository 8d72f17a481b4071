"""mamba_ssm.utils: ``generation`` (InferenceParams) and ``hf`` (local config / state dict loading)."""
