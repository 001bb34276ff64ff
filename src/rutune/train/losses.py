"""Pure tensor functions for training losses. No Trainer, no config: tensors in, tensors out.

# ---- SFT section (owned by the SFT recipe) ----

# ---- Preference section (owned by the SimPO recipe) ----
"""
