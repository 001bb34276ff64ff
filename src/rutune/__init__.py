"""rutune: adapt instruction-tuned LLMs to Russian and prove what each adaptation did."""

__version__ = "0.1.0"
