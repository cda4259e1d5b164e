"""meddistill: medical image dataset distillation (PTM with DOM, baselines, benchmark)."""

__version__ = "0.1.0"
