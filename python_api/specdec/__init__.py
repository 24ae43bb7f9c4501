"""specdec: a thin speculative-decoding loop over Hugging Face causal LMs, built on specdec_kernels.

>>> import specdec
>>> target, draft, tokenizer = specdec.load_default_pair()
>>> out = specdec.generate(target, draft, tokenizer("import os", return_tensors="pt").input_ids)

Modules, leaves first: :mod:`specdec.proposer` (the strategy and drafter contract), :mod:`specdec.strategies`
(chains, trees, prompt lookup, and their names), :mod:`specdec.drafters` and :mod:`specdec.eagle` (where
draft distributions come from), :mod:`specdec.runner` (a model over the speculative cache),
:mod:`specdec.decoder` (the loop), :mod:`specdec.tune` (the cost model) and :mod:`specdec.generate`.
"""

from specdec.decoder import Decoder, GenerateOutput
from specdec.eagle import EagleHead, load_head
from specdec.generate import generate
from specdec.models import load_default_pair, load_smollm2, load_smollm2_pair
from specdec.proposer import DraftContext, Drafter, DraftTree, Proposer, Rows
from specdec.strategies import Chain, DynamicLookahead, DynamicTree, LookupOrChain, PromptLookup, StaticTree

__version__ = "0.1.0"
__all__ = [
    "load_default_pair",
    "load_smollm2",
    "load_smollm2_pair",
    "generate",
    "GenerateOutput",
    "Decoder",
    "Chain",
    "DynamicLookahead",
    "StaticTree",
    "DynamicTree",
    "PromptLookup",
    "LookupOrChain",
    "EagleHead",
    "load_head",
    "Proposer",
    "Drafter",
    "DraftContext",
    "DraftTree",
    "Rows",
]
