"""specdec: a thin speculative-decoding loop over Hugging Face causal LMs, built on specdec_kernels."""
__version__ = "0.1.0"
