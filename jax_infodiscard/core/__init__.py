"""Core math: feature scale, linearised column norms, the shared solver."""
