"""rlft: a staged alignment pipeline for language models.

Importing rlft is light on purpose: no torch, transformers, trl, deepspeed or wandb import
happens here; each is imported inside the function that needs it.
"""

__version__ = "0.1.0"
