"""Which transformers causal LMs specdec runs exactly, and which it refuses up front: the generated
table docs/model_support.md.

Every architecture in transformers' causal-LM registry (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, one row per
class) is built offline from its config class's defaults scaled down (2-layer target, 1-layer draft,
width 32, vocabulary 96; sliding windows of 8, crossed by the 24-token prompt). Weights are drawn with
std 0.3 (at transformers' std 0.02 a tiny model barely uses its context, and a wrong mask would go
unnoticed); the draft is the target's embeddings, first layer and head plus noise, so drafts are
accepted and trees and compaction are exercised. Each class then either

* runs: greedy ``specdec.generate`` equals ``target.generate(do_sample=False)`` token for token with a
  chain, a tree strategy ("eagle2"), prompt lookup (specdec.PromptLookup), and a left-padded ragged batch
  of 2 (each row equal to its own unpadded greedy output), with drafts accepted; or
* is refused: a ValueError naming the class, raised before the loop's first forward (ModelRunner.forward
  is patched to fail while asking); or
* is skipped, with the reason in the table (not a decoder, or not buildable from scaled-down defaults).

Anything else (a mismatch, a crash) is a failure. The committed doc must equal what this generates;
``SPECDEC_UPDATE_SUPPORT=1 pytest -q tests/test_model_support.py`` rewrites it (after a change to the hook
or to transformers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import warnings

import pytest
import torch
import transformers
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import specdec
from specdec import runner as R
from specdec.cache import SpecCache, layout_from_config
from specdec.model_support import UnsupportedModelError, check_model_support

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "model_support.md"
VOCAB, WIDTH, WINDOW, NEW = 96, 32, 8, 24
MAX_PARAMS = 5_000_000  # a "tiny" model past this did not scale down (defaults the generic shrink misses)
WEIGHT_STD, DRAFT_NOISE, TARGET_EXTRA = 0.3, 0.03, 0.3
MODES = ("chain", "eagle2", "prompt lookup", "ragged batch")

# Scaled-down values for whichever of these fields a config class has (sub-configs included).
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=WIDTH,
    d_model=WIDTH,
    n_embd=WIDTH,
    intermediate_size=2 * WIDTH,
    ffn_dim=2 * WIDTH,
    n_inner=2 * WIDTH,
    ffn_hidden_size=2 * WIDTH,
    num_attention_heads=4,
    n_head=4,
    n_heads=4,
    num_key_value_heads=2,
    num_kv_heads=2,
    kv_n_heads=2,
    head_dim=8,
    max_position_embeddings=128,
    n_positions=128,
    max_seq_len=128,
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    moe_num_experts=4,
    num_experts_per_tok=2,
    moe_top_k=2,
    moe_k=2,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=0,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=4,
    qk_nope_head_dim=4,
    v_head_dim=8,
    sliding_window=WINDOW,
    window_size=WINDOW,
    rotary_dim=4,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    is_decoder=True,
    use_cache=True,
    layer_types=None,  # recomputed for the new layer count
)
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
NOT_DECODERS = ("text_config", "vision_config", "audio_config", "text_encoder", "audio_encoder", "vq_config")


class Skip(Exception):
    """An architecture this test cannot judge, with the reason for the table."""


@dataclasses.dataclass
class Row:
    model_type: str  # the first registry key of the class (aliases after it)
    cls: str
    verdict: str  # "runs", "refused", "skipped" or "FAILS"
    modes: dict = dataclasses.field(default_factory=dict)  # mode -> "exact" / what went wrong
    why: str = ""
    tau: dict = dataclasses.field(default_factory=dict)  # mode -> tokens per verification (not in the doc)


def architectures() -> dict[str, list[str]]:
    """{class name: its registry keys}, one entry per class (several model types share a class)."""
    out: dict[str, list[str]] = {}
    for model_type, cls in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()):
        out.setdefault(cls, []).append(model_type)
    return out


def shrink(config_dict: dict, layers: int) -> dict:
    kw = {k: v for k, v in SMALL.items() if k in config_dict}
    kw.update({k: layers for k in LAYER_FIELDS if k in config_dict})
    if "kv_lora_rank" in config_dict:  # multi-head latent attention: head_dim follows the rope/nope split
        kw.pop("head_dim", None)
    if "attention_types" in config_dict:  # GPT-Neo: [[pattern, repeats]] must cover the layers
        kw["attention_types"] = [[["global"], layers]]
    return kw


def tiny_config(model_type: str, layers: int):
    base = AutoConfig.for_model(model_type)
    if getattr(base, "is_encoder_decoder", False):
        raise Skip("encoder-decoder family (its causal-LM class is the decoder half, conditioned on an encoder)")
    nested = [k for k in base.sub_configs if k in NOT_DECODERS]
    if nested:
        raise Skip(f"composite model ({', '.join(nested)}): not a text-only decoder")
    kw = shrink(base.to_dict(), layers)
    for key in base.sub_configs:  # e.g. MPT's attn_config, DBRX's ffn_config
        sub = getattr(base, key, None)
        if sub is not None:
            kw[key] = {**sub.to_dict(), **shrink(sub.to_dict(), layers)}
    return AutoConfig.for_model(model_type, **kw)


def _short(e: BaseException, limit: int = 160) -> str:
    text = re.sub(r"\s+", " ", f"{type(e).__name__}: {e}")
    text = re.sub(r"0x[0-9a-f]+", "0x…", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@torch.no_grad()
def randomize(model, gen: torch.Generator) -> None:
    """Matrices (and embeddings) ~ N(0, WEIGHT_STD): large enough that the output depends on context."""
    for p in model.parameters():
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=gen) * WEIGHT_STD)


@torch.no_grad()
def draft_like(target, draft, gen: torch.Generator) -> None:
    """The draft's weights: the target's of the same name (embeddings, layer 0, head) plus noise. The
    target's layers the draft lacks are scaled by TARGET_EXTRA: they still change the output (a draft
    is sometimes rejected), but not so much that nothing is accepted."""
    mine = dict(draft.named_parameters())
    for name, p in target.named_parameters():
        if name in mine and mine[name].shape == p.shape:
            mine[name].copy_(p + DRAFT_NOISE * torch.randn(p.shape, generator=gen) * (p.dim() >= 2))
        elif p.dim() >= 2:
            p.mul_(TARGET_EXTRA)


def build(model_type: str, cls_name: str):
    """The (target, draft) pair of ``model_type``, in eval mode, fp32; Skip when it cannot be built."""
    try:
        cls = getattr(transformers, cls_name)
        configs = [tiny_config(model_type, n) for n in (2, 1)]
        with torch.device("meta"):
            n = sum(p.numel() for p in cls(configs[0]).parameters())
        if n > MAX_PARAMS:
            raise Skip(f"its config's defaults do not scale down ({n / 1e6:.0f}M parameters at width {WIDTH})")
        torch.manual_seed(0)
        target, draft = (cls(c).eval() for c in configs)
    except Skip:
        raise
    except Exception as e:  # noqa: BLE001 -- the table says why
        raise Skip(f"not buildable offline from scaled-down defaults ({_short(e)})") from e
    gen = torch.Generator().manual_seed(1)
    randomize(target, gen)
    draft_like(target, draft, gen)
    for m in (target, draft):
        m.generation_config.eos_token_id = None  # run the full length (specdec.generate: no EOS given)
        m.generation_config.pad_token_id = 0
    return target, draft


class ForwardRan(AssertionError):
    pass


@contextlib.contextmanager
def no_forward():
    """ModelRunner.forward fails while active: a refusal raised inside came before any forward."""

    def fail(self, *args, **kwargs):
        raise ForwardRan("ModelRunner.forward ran before the model was refused")

    saved = R.ModelRunner.forward
    R.ModelRunner.forward = fail
    try:
        yield
    finally:
        R.ModelRunner.forward = saved


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """P (24 tokens, a repeated 10-gram so prompt lookup has drafts) and Q (15 tokens), ids >= 3."""
    g = torch.Generator().manual_seed(2)
    head = torch.randint(3, VOCAB, (10,), generator=g)
    return torch.cat([head, head, head[:4]])[None], torch.randint(3, VOCAB, (1, 15), generator=g)


def reference(target, ids: torch.Tensor) -> list[int]:
    out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def run_modes(target, draft) -> tuple[dict, dict]:
    P, Q = prompts()
    want_p, want_q = reference(target, P), reference(target, Q)
    pad = P.shape[1] - Q.shape[1]
    ragged = torch.cat([P, torch.cat([torch.zeros(1, pad, dtype=torch.int64), Q], 1)])
    mask = torch.ones_like(ragged)
    mask[1, :pad] = 0
    runs = {
        "chain": (dict(draft=draft, input_ids=P, strategy="chain"), [want_p]),
        "eagle2": (dict(draft=draft, input_ids=P, strategy="eagle2"), [want_p]),
        "prompt lookup": (dict(draft=None, input_ids=P, strategy=specdec.PromptLookup()), [want_p]),
        "ragged batch": (dict(draft=draft, input_ids=ragged, attention_mask=mask, strategy="eagle2"), [want_p, want_q]),
    }
    modes, tau = {}, {}
    for mode, (kw, wants) in runs.items():
        try:
            out = specdec.generate(target, max_new_tokens=NEW, **kw)
        except Exception as e:  # noqa: BLE001 -- recorded as a failure of this mode
            modes[mode] = f"crash: {_short(e, 120)}"
            continue
        got = out.sequences[:, kw["input_ids"].shape[1] :].tolist()
        bad = [first_difference(g, w) for g, w in zip(got, wants)]
        modes[mode] = (
            "exact" if all(b is None for b in bad) else f"differs at token {min(b for b in bad if b is not None)}"
        )
        tau[mode] = out.stats["tau"]
    return modes, tau


def first_difference(got: list[int], want: list[int]) -> int | None:
    if got == want:
        return None
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


def judge(cls_name: str, model_types: list[str]) -> Row:
    row = Row(", ".join(model_types), cls_name, "skipped")
    try:
        target, draft = build(model_types[0], cls_name)
    except Skip as e:
        row.why = str(e)
        return row
    ids = prompts()[0]
    try:
        with no_forward():
            specdec.generate(target, draft, ids, max_new_tokens=NEW)
    except ForwardRan:
        pass  # passed the up-front check
    except UnsupportedModelError as e:
        row.verdict = "refused"
        row.why = str(e).split("not supported by specdec: ")[-1].removesuffix(" (see docs/model_support.md)")
        assert cls_name in str(e), str(e)
        return row
    except Exception as e:  # noqa: BLE001
        row.verdict, row.why = "FAILS", f"the up-front check raised {_short(e)}"
        return row
    row.modes, row.tau = run_modes(target, draft)
    row.verdict = "runs" if all(v == "exact" for v in row.modes.values()) else "FAILS"
    return row


def render(rows: list[Row]) -> str:
    count = {v: sum(r.verdict == v for r in rows) for v in ("runs", "refused", "skipped", "FAILS")}
    lines = [
        "# Model support (generated)",
        "",
        "Generated by `tests/test_model_support.py` from the causal-LM registry of transformers "
        f"{transformers.__version__} (`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, one row per class); do not edit by "
        "hand: `SPECDEC_UPDATE_SUPPORT=1 pytest -q tests/test_model_support.py` rewrites it, and the test fails "
        "while this file differs from what it generates.",
        "",
        "Each class is built tiny and random (2-layer target, 1-layer draft sharing the target's embeddings, "
        f"first layer and head plus noise; width {WIDTH}, vocabulary {VOCAB}, sliding windows of {WINDOW}, "
        f"weights of std {WEIGHT_STD}, fp32) from its config class's defaults. "
        "**runs**: greedy `specdec.generate` equals `target.generate(do_sample=False)` for all "
        f"{NEW} new tokens with a chain, a tree (`eagle2`), prompt lookup and a left-padded ragged batch of "
        "2. **refused**: `specdec.generate` and `ModelRunner` raise a ValueError naming the class and the "
        "reason before any forward (the reasons are explained in [loop.md](loop.md#which-models-run)). "
        "**skipped**: not judged here, for the reason given.",
        "",
        f"Totals: {count['runs']} run, {count['refused']} refused, {count['skipped']} skipped"
        + (f", **{count['FAILS']} FAIL**" if count["FAILS"] else "")
        + ".",
        "",
        "| model type | class | verdict | " + " | ".join(MODES) + " | why |",
        "|---|---|---|" + "---|" * len(MODES) + "---|",
    ]
    for r in rows:
        cells = [r.model_type, f"`{r.cls}`", f"**{r.verdict}**"]
        cells += [r.modes.get(m, "") for m in MODES] + [r.why]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def rows():
    saved, threads = R.CPU_PADDING, torch.get_num_threads()
    R.CPU_PADDING = False  # no per-model padding calibration (timing forwards) for ~100 tiny models
    torch.set_num_threads(1)  # [1, 32] x [32, 96] matmuls: a second thread only adds contention (20x)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "does not support setting its attention implementation"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield [judge(cls, types) for cls, types in architectures().items()]
    finally:
        R.CPU_PADDING = saved
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity(verbosity)


def test_support_table_is_current(rows):
    text = render(rows)
    if os.environ.get("SPECDEC_UPDATE_SUPPORT") == "1":
        DOC.write_text(text)
    assert DOC.exists() and DOC.read_text() == text, (
        "docs/model_support.md differs from what the test generates; rerun with SPECDEC_UPDATE_SUPPORT=1"
    )


def test_every_architecture_runs_exactly_or_is_refused(rows):
    failing = [(r.cls, r.why or r.modes) for r in rows if r.verdict == "FAILS"]
    assert not failing, failing
    assert sum(r.verdict == "runs" for r in rows) >= 30  # the table is not vacuous


def test_drafts_are_accepted_where_a_draft_model_runs(rows):
    """A draft that is never accepted would leave trees and compaction untested."""
    for r in rows:
        if r.verdict == "runs":
            assert r.tau["chain"] > 1.0 and r.tau["eagle2"] > 1.0, (r.cls, r.tau)


@pytest.mark.parametrize(
    "cls, reason",
    [
        ("FalconForCausalLM", "AttentionInterface"),
        ("GPTJForCausalLM", "AttentionInterface"),
        ("CodeGenForCausalLM", "AttentionInterface"),
        ("BloomForCausalLM", "AttentionInterface"),
        ("GPTNeoForCausalLM", "AttentionInterface"),
        ("MptForCausalLM", "AttentionInterface"),
        ("StableLmForCausalLM", "keyword arguments"),
        ("DeepseekV2ForCausalLM", "different shapes"),
        ("DeepseekV3ForCausalLM", "different shapes"),
    ],
)
def test_issue_24_models_are_refused_by_name(rows, cls, reason):
    (row,) = [r for r in rows if r.cls == cls]
    assert row.verdict == "refused" and reason in row.why, row


def test_draft_is_checked_too():
    """An unsupported draft next to a supported target is refused as the draft, before any forward."""
    target, _ = build("llama", "LlamaForCausalLM")
    falcon, _ = build("falcon", "FalconForCausalLM")
    with no_forward(), pytest.raises(ValueError, match=r"^draft: FalconForCausalLM .*AttentionInterface"):
        specdec.generate(target, falcon, prompts()[0], max_new_tokens=4)
    with pytest.raises(ValueError, match="FalconForCausalLM"):
        R.ModelRunner(falcon, 1, 16, pad=False)


@pytest.mark.parametrize("multi_query, new_arch, want", [(True, False, 1), (False, True, 2)])
def test_config_layout_knows_falcon_head_counts(multi_query, new_arch, want):
    """Without a model at hand, SpecCache reads the KV head count from the config: Falcon names it
    num_kv_heads, or says multi_query (one KV head); neither is num_key_value_heads."""
    cfg = transformers.FalconConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_kv_heads=2,
        multi_query=multi_query,
        new_decoder_architecture=new_arch,
    )
    assert layout_from_config(cfg).kv_heads == want
    c = SpecCache(cfg, 1, 8, dtype=torch.float32, device=torch.device("cpu"))
    assert c.buffer.shape == (2, 2, 1, want, 8, WIDTH // 4)


def test_layout_comes_from_the_actual_keys():
    """GPT-BigCode's multi-query keys: one KV head, not the config's head count."""
    target, _ = build("gpt_bigcode", "GPTBigCodeForCausalLM")
    layout = check_model_support(target)
    assert (layout.num_layers, layout.kv_heads, layout.head_dim) == (2, 1, WIDTH // 4)
    r = R.ModelRunner(target, 2, 16, pad=False)
    assert r.cache.buffer.shape == (2, 2, 2, 1, 16, WIDTH // 4)
