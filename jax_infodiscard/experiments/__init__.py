"""End-to-end experiments (the ``demo`` job and friends)."""
