"""specdec: a thin speculative-decoding loop over Hugging Face causal LMs, built on specdec_kernels.

>>> import specdec
>>> target, draft, tokenizer = specdec.load_default_pair()
>>> out = specdec.generate(target, draft, tokenizer("import os", return_tensors="pt").input_ids)
"""

from specdec.eagle import EagleHead, load_head
from specdec.generate import GenerateOutput, generate
from specdec.models import load_default_pair, load_smollm2, load_smollm2_pair
from specdec.prompt_lookup import LookupOrChain, PromptLookup
from specdec.strategies import Chain, DraftContext, DynamicLookahead, Proposer
from specdec.tree_drafting import DynamicTree, StaticTree

__version__ = "0.1.0"
__all__ = [
    "load_default_pair",
    "load_smollm2",
    "load_smollm2_pair",
    "generate",
    "GenerateOutput",
    "Chain",
    "DynamicLookahead",
    "StaticTree",
    "DynamicTree",
    "PromptLookup",
    "LookupOrChain",
    "EagleHead",
    "load_head",
    "Proposer",
    "DraftContext",
]
