"""Batch builders: SFT padding-free packing, and preference batches (prefix-shared and concatenated).

# ---- SFT section ----

# ---- Preference section ----
"""
