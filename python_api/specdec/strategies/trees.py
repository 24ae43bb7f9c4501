"""Token trees drafted by the drafter: static trees, EAGLE-2, DySpec and Dynamic Depth Decoding.

Every method grows candidate nodes below the root (the last committed token). The drafter (a draft
model or an EAGLE head, :mod:`specdec.drafters`) first gives the root's distribution (``begin``), then
runs once per expansion round over the nodes it needs distributions for, with tree attention on its
own cache. A round re-feeds every non-root node fed so far, so each forward is a plain "prefix + tree"
tree-attention call (the root is in the prefix); nodes never fed are leaves. Fed nodes keep their slot
across rounds, so after verification the drafter's K/V of the accepted path is found at fixed positions.

Children of a node are distinct tokens. With ``temperature == 0`` or a deterministic method they are
the top-ranked tokens and verification uses the deterministic rule (lossless for any tree shape the
draft picks). DySpec at ``temperature > 0`` samples children without replacement from q and verifies
with q: the decision to draw another child of a node depends only on children drawn before it (the
parent's remaining mass), never on the child's own value, which keeps recursive rejection sampling
lossless.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import numbers

import torch

from specdec.proposer import MAX_TREE_NODES, DraftContext, DraftTree, Proposer
from specdec.validation import check_int, check_real, check_tree_size


class Growth:
    """Candidate nodes of every sequence (index 0 = root) and the drafter forwards over the fed ones:
    the building block of a tree strategy (``add`` nodes, ``feed`` them to the drafter for their
    distributions, ``finish`` with the kept ones; docs/strategies.md has an example)."""

    def __init__(self, drafter, rows, temperature: float):
        self.drafter, self.rows, self.temperature = drafter, rows, temperature
        B, dev = rows.root.shape[0], rows.root.device
        self.tokens = rows.root[:, None].clone()
        self.parents = torch.full((B, 1), -1, dtype=torch.int64, device=dev)
        self.scores = torch.zeros(B, 1, dtype=torch.float32, device=dev)  # cumulative draft log-prob
        self.depth = torch.zeros(B, 1, dtype=torch.int64, device=dev)
        self.fed = torch.zeros(B, 1, dtype=torch.int64, device=dev)  # node index of each fed slot
        self.slot = torch.zeros(B, 1, dtype=torch.int64, device=dev)  # fed slot of each node, -1 if none
        # Ancestor mask of the fed layout [prev, root, fed slot 1, ...], grown a block of rows per feed
        # (a new node sees what its parent sees, plus itself) instead of rebuilt every round. Forwards
        # run its non-root part: prev and the root are in the drafter's cache after ``begin``.
        self.layout_mask = torch.ones(B, 2, 2, dtype=torch.bool, device=dev).tril()
        self.layout_depth = torch.stack([rows.ctx - 2, rows.ctx - 1], 1)  # positions of prev and the root
        self.root_logq: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.tokens.shape[1]

    def add(self, tokens, parents, scores) -> torch.Tensor:
        """Append nodes ([B, m] each); returns their node indices [B, m]."""
        m = tokens.shape[1]
        idx = torch.arange(self.n, self.n + m, device=tokens.device).expand_as(tokens)
        self.tokens = torch.cat([self.tokens, tokens], 1)
        self.parents = torch.cat([self.parents, parents], 1)
        self.scores = torch.cat([self.scores, scores], 1)
        self.depth = torch.cat([self.depth, self.depth.gather(1, parents) + 1], 1)
        self.slot = torch.cat([self.slot, torch.full_like(tokens, -1)], 1)
        return idx

    def feed(self, nodes: torch.Tensor | None = None) -> torch.Tensor:
        """Mark ``nodes`` [B, m] as fed, run the drafter over all fed non-root nodes; log q of every fed
        node (root first), [B, F, V].

        Every new node's parent must already be fed (true for all methods: a node is expanded, and so
        fed, before its children exist).
        """
        if self.root_logq is None:
            self.root_logq = torch.log_softmax(self.drafter.begin(self.rows) / (self.temperature or 1.0), -1)[:, None]
        if nodes is not None and nodes.shape[1]:
            B, m = nodes.shape
            F = self.fed.shape[1]
            self.slot.scatter_(1, nodes, torch.arange(F, F + m, device=nodes.device).expand_as(nodes))
            self.fed = torch.cat([self.fed, nodes], 1)
            parent_row = 1 + self.slot.gather(1, self.parents.gather(1, nodes))  # layout rows of the parents
            rows = self.layout_mask.gather(1, parent_row[..., None].expand(-1, -1, 1 + F))  # [B, m, 1+F]
            L = self.layout_mask.shape[1]
            grown = torch.zeros(B, L + m, L + m, dtype=torch.bool, device=nodes.device)
            grown[:, :L, :L] = self.layout_mask
            grown[:, L:, :L] = rows
            grown[:, L:, L:] = torch.eye(m, dtype=torch.bool, device=nodes.device)
            self.layout_mask = grown
            self.layout_depth = torch.cat(
                [self.layout_depth, self.rows.ctx[:, None] - 1 + self.depth.gather(1, nodes)], 1
            )
        if self.fed.shape[1] == 1:
            return self.root_logq
        toks = self.tokens.gather(1, self.fed[:, 1:])
        logits = self.drafter.forward(
            toks, self.layout_depth[:, 2:], self.layout_mask[:, 2:, 2:].contiguous(), self.rows.ctx
        )
        return torch.cat([self.root_logq, torch.log_softmax(logits / (self.temperature or 1.0), -1)], 1)

    def finish(self, keep: torch.Tensor, q: torch.Tensor | None = None) -> DraftTree:
        """Tree of the kept nodes ([B, N] indices, ancestor-closed, ascending, root first)."""
        remap = torch.full_like(self.tokens, -1)
        remap.scatter_(1, keep, torch.arange(keep.shape[1], device=keep.device).expand_as(keep))
        par = self.parents.gather(1, keep)
        parents = torch.where(par >= 0, remap.gather(1, par.clamp(min=0)), -1)
        return DraftTree(
            self.tokens.gather(1, keep),
            parents,
            None if q is None else q.gather(1, keep[..., None].expand(-1, -1, q.shape[-1])),
            self.slot.gather(1, keep),
        )

    def best(self, budget: int) -> torch.Tensor:
        """Root + the ``budget`` highest-scoring nodes, ascending. A child never outscores its parent
        (log-probabilities are <= 0) and the stable sort puts the earlier index (the parent) first on
        ties, so the set is ancestor-closed."""
        s = self.scores.clone()
        s[:, 0] = float("inf")
        order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, : budget + 1]
        return order.sort(1).values


def _beam_search(g: Growth, top_k: int, depth: int, log_mass_floor: float | None) -> None:
    """EAGLE-2 expansion: every round, the top_k frontier nodes by cumulative log-prob each get their
    top_k children. With ``log_mass_floor`` (DDD) it stops once the beam's total probability, log of
    the summed cumulative probabilities, is below the floor for every sequence."""
    frontier = torch.zeros_like(g.tokens)  # the root
    for d in range(1, depth + 1):
        logq = g.feed(frontier if d > 1 else None)[:, -frontier.shape[1] :]  # [B, w, V]
        top = logq.topk(top_k, dim=-1)
        w = frontier.shape[1]
        scores = (g.scores.gather(1, frontier)[..., None] + top.values).reshape(-1, w * top_k)
        parents = frontier[..., None].expand(-1, -1, top_k).reshape(-1, w * top_k)
        children = g.add(top.indices.reshape(-1, w * top_k), parents, scores)
        if d == depth:
            break
        beam = scores.topk(min(top_k, scores.shape[1]), dim=1)
        if log_mass_floor is not None and bool((beam.values.logsumexp(1) < log_mass_floor).all()):
            break
        frontier = children.gather(1, beam.indices.sort(1).values)


def _static(g: Growth, paths: list[tuple[int, ...]]) -> None:
    """Medusa-style tree: each path lists top-k ranks from the root (every prefix is a node too)."""
    B, dev = g.tokens.shape[0], g.tokens.device
    index = {(): 0}
    logq = g.feed()  # [B, 1, V]: the root's distribution
    for d in range(1, max(map(len, paths)) + 1):
        level = [p for p in paths if len(p) == d]
        pars = torch.tensor([index[p[:-1]] for p in level], device=dev)
        ranks = torch.tensor([p[-1] for p in level], device=dev)
        lq = logq[:, g.slot[0, pars]]  # [B, m, V]; fed slots are the same in every row of a static tree
        top = lq.topk(int(ranks.max()) + 1, dim=-1)
        pick = ranks.view(1, -1, 1).expand(B, -1, 1)
        toks, vals = top.indices.gather(2, pick).squeeze(2), top.values.gather(2, pick).squeeze(2)
        new = g.add(toks, pars.expand(B, -1), g.scores[:, pars] + vals)
        index.update(zip(level, new[0].tolist()))
        expand = sorted({index[p[:-1]] for p in paths if len(p) == d + 1})
        if expand:
            logq = g.feed(torch.tensor(expand, device=dev).expand(B, -1))


def _dyspec(g: Growth, budget: int, width: int, gen: torch.Generator | None):
    """DySpec greedy expansion with a max-heap per sequence on cumulative draft probability.

    A heap entry is the slot "next child of node u": popping it adds that child (its priority its
    cumulative probability) and re-queues u's following sibling slot, valued at u's remaining mass.
    Pops go in rounds of ``width`` per sequence; one draft forward per round gives the new nodes'
    distributions. Greedy takes children in rank order; sampling draws each child from q without
    replacement at the time its slot is popped. Returns q (probabilities) per node for verification
    when sampling, else None.
    """
    B, sample = g.tokens.shape[0], g.temperature > 0
    logq = g.feed()[:, 0]  # [B, V]
    q_rows = [[logq[b].exp()] for b in range(B)]  # per sequence, q of each node (None for unfed)
    drawn = [[torch.zeros_like(logq[b], dtype=torch.bool)] for b in range(B)]
    tie = itertools.count()
    heaps = [[(-0.0, next(tie), 0)] for _ in range(B)]  # (-log priority, tiebreak, parent node)
    scores = [[0.0] for _ in range(B)]
    while g.n - 1 < budget:
        m = min(width, budget - (g.n - 1))
        toks, pars, scs = [], [], []
        for b in range(B):
            row_t, row_p, row_s = [], [], []
            for _ in range(m):
                if not heaps[b]:
                    raise ValueError(f"dyspec: the vocabulary is too small for a tree of {budget} nodes")
                _, _, u = heapq.heappop(heaps[b])
                q, seen = q_rows[b][u], drawn[b][u]
                avail = q.masked_fill(seen, 0.0)
                x = int(torch.multinomial(avail, 1, generator=gen)) if sample else int(avail.argmax())
                seen[x] = True
                row_t.append(x), row_p.append(u)
                row_s.append(scores[b][u] + float(q[x].clamp_min(1e-30).log()))
                rest = float(q.masked_fill(seen, 0.0).max() if not sample else q.masked_fill(seen, 0.0).sum())
                if rest > 0:  # the sibling slot: next-best child (greedy) or the remaining mass (sampling)
                    heapq.heappush(heaps[b], (-(scores[b][u] + torch.tensor(rest).log().item()), next(tie), u))
            toks.append(row_t), pars.append(row_p), scs.append(row_s)
        dev = g.tokens.device
        new = g.add(
            torch.tensor(toks, device=dev),
            torch.tensor(pars, device=dev),
            torch.tensor(scs, device=dev, dtype=torch.float32),
        )
        for b in range(B):
            scores[b] += scs[b]
        if g.n - 1 >= budget:
            break
        logq = g.feed(new)[:, -m:]  # the new nodes' distributions
        for b in range(B):
            for j, node in enumerate(new[b].tolist()):
                q = logq[b, j].exp()
                q_rows[b].append(q)
                drawn[b].append(torch.zeros_like(q, dtype=torch.bool))
                first = 0.0 if sample else float(q.max().log())  # its first child: all mass / best child
                heapq.heappush(heaps[b], (-(scores[b][node] + first), next(tie), node))
    if not sample:
        return None
    V = logq.shape[-1]
    uniform = torch.full((V,), 1.0 / V, device=g.tokens.device)
    return torch.stack([torch.stack(r + [uniform] * (g.n - len(r))) for r in q_rows])


DEFAULT_STATIC_PATHS = {
    # Medusa-style shapes: depth-first top-k ranks; every prefix of a path is a node as well.
    "chain4": [(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)],
    "binary3": [p for d in range(1, 4) for p in itertools.product(range(2), repeat=d)],  # 14 nodes
    "wide16": [
        (0,),
        (1,),
        (2,),
        (3,),
        (0, 0),
        (0, 1),
        (1, 0),
        (0, 0, 0),
        (0, 0, 1),
        (0, 1, 0),
        (1, 0, 0),
        (0, 0, 0, 0),
        (0, 0, 0, 1),
        (0, 0, 1, 0),
        (0, 0, 0, 0, 0),
        (0, 0, 0, 0, 0, 0),
    ],
}


def _prod(rates, path) -> float:
    out = 1.0
    for r in path:
        out *= rates[r]
    return out


def _check_path(p) -> tuple[int, ...]:
    """One rank path as a tuple of ints: non-empty, ranks ints >= 0 (``int(0.7)`` would silently be rank 0),
    no deeper than the tree-attention limit allows (a path of length d alone makes d draft nodes)."""
    if not isinstance(p, (tuple, list)) or not p:
        raise ValueError(f"StaticTree: paths: each path must be a non-empty tuple of int ranks >= 0, got {p!r}")
    if len(p) > MAX_TREE_NODES - 1:
        raise ValueError(
            f"StaticTree: paths: a path of length {len(p)} makes more than {MAX_TREE_NODES - 1} draft "
            f"nodes; tree attention allows at most {MAX_TREE_NODES} nodes (root included)"
        )
    for r in p:
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 0:
            raise ValueError(
                f"StaticTree: paths: each path must be a non-empty tuple of int ranks >= 0, "
                f"got rank {r!r} in path {p!r}"
            )
    return tuple(int(r) for r in p)


def close_paths(paths) -> list[tuple[int, ...]]:
    """All prefixes of the given rank paths, ordered by depth then ranks (parents before children)."""
    if isinstance(paths, (str, bytes)) or not isinstance(paths, (list, tuple)) or not paths:
        raise ValueError(
            f"StaticTree: paths must be a shape name {sorted(DEFAULT_STATIC_PATHS)} or a non-empty "
            f"list of rank paths such as [(0,), (1,), (0, 0)], got {paths!r}"
        )
    out = set()
    for p in paths:
        p = _check_path(p)
        out.update(p[:i] for i in range(1, len(p) + 1))
        if len(out) + 1 > MAX_TREE_NODES:  # stop early: a hostile list could be huge
            raise ValueError(
                f"StaticTree: paths make more than {MAX_TREE_NODES} nodes (root included); "
                f"tree attention allows at most {MAX_TREE_NODES}"
            )
    return sorted(out, key=lambda p: (len(p), p))


class TreeStrategy(Proposer):
    """Tree strategies: no state between steps, nothing to learn from a result (Proposer's ``start``,
    ``observe`` and ``select`` are no-ops)."""

    needs_drafter = True


@dataclasses.dataclass
class StaticTree(TreeStrategy):
    """A fixed tree of top-k ranks (Medusa "choices"): a shape name from DEFAULT_STATIC_PATHS or a list of
    rank paths such as ``[(0,), (1,), (0, 0)]``."""

    paths: str | list = "wide16"

    def __post_init__(self):
        raw = DEFAULT_STATIC_PATHS.get(self.paths) if isinstance(self.paths, str) else self.paths
        if raw is None:
            raise ValueError(f"StaticTree: unknown shape {self.paths!r}; known: {sorted(DEFAULT_STATIC_PATHS)}")
        self._paths = close_paths(raw)
        self.max_nodes = len(self._paths) + 1
        self.max_fed = self.max_nodes  # draft tokens per forward at most: the fed non-root nodes (or prev + root)
        check_tree_size("StaticTree", "the nodes of paths (root included)", self.max_nodes)
        self.top_ranks = 1 + max(r for p in self._paths for r in p)  # candidates one node draws (vs the vocabulary)

    def draft_forward_sizes(self) -> list[int]:
        """prev + root, then per round the inner nodes fed so far."""
        sizes, fed = [2], 0
        for d in range(1, max(map(len, self._paths))):
            fed += len({p[:-1] for p in self._paths if len(p) == d + 1})
            sizes.append(fed)
        return sizes

    @classmethod
    def sequoia(cls, rank_accept, size: int, max_depth: int | None = None) -> StaticTree:
        """The best static tree of ``size`` draft nodes for measured acceptance rates (Sequoia-style).

        ``rank_accept[r]`` is the probability that the target's token is the draft's rank-r token (see
        :func:`specdec.tune.measure_rank_acceptance`). Under Sequoia's positional model a node at rank
        path (r1, .., rd) is accepted with probability prod(rank_accept[ri]), and the expected accepted
        length is the sum of that over the nodes. The dynamic program over (size, depth) then reduces to
        best-first search: with rates sorted, the ``size`` most probable paths are ancestor- and
        sibling-closed, so taking them greedily from a heap is optimal.
        """
        size = check_int("StaticTree.sequoia", "size", size, 1, MAX_TREE_NODES - 1)
        if max_depth is not None:
            max_depth = check_int("StaticTree.sequoia", "max_depth", max_depth, 1)
        rates = [float(a) for a in rank_accept]
        if size < 1 or not rates or any(not 0 <= a <= 1 for a in rates):
            raise ValueError("StaticTree.sequoia: need size >= 1 and acceptance rates in [0, 1]")
        heap = [(-rates[0], (0,))]
        paths = []
        while heap and len(paths) < size:
            neg, path = heapq.heappop(heap)
            paths.append(path)
            if len(path) < (max_depth or size) and rates[0] > 0:  # first child of this node
                heapq.heappush(heap, (neg * rates[0], path + (0,)))
            r = path[-1] + 1
            if r < len(rates):  # next sibling
                heapq.heappush(heap, (neg / max(rates[r - 1], 1e-12) * rates[r], path[:-1] + (r,)))
        tree = cls(paths)
        tree.expected_accepted = sum(_prod(rates, p) for p in paths)
        return tree

    def propose(self, ctx: DraftContext) -> DraftTree:
        g = Growth(ctx.drafter, ctx.rows, ctx.temperature)
        _static(g, self._paths)
        return g.finish(torch.arange(g.n, device=g.tokens.device).expand(g.tokens.shape[0], -1))


@dataclasses.dataclass
class DynamicTree(TreeStrategy):
    """Trees shaped by the draft's confidence, ``budget`` draft nodes per step.

    method:
      ``"eagle2"`` expand the top_k nodes by cumulative draft log-probability for ``depth`` rounds,
                   then keep the best ``budget`` of all candidates (EAGLE-2, Li et al., 2024).
      ``"dyspec"`` greedy expansion with a priority queue, ``width`` pops per draft forward (DySpec,
                   Xiong et al., 2024); the only method that samples children when temperature > 0.
      ``"ddd"``    EAGLE-2 with a dynamic depth: stop expanding when the log of the beam's summed
                   probability falls below ``log_mass_floor`` (Dynamic Depth Decoding, Brown et al., 2024).
    """

    method: str = "eagle2"
    budget: int = 32
    top_k: int = 6
    depth: int = 6
    width: int = 8
    log_mass_floor: float = -2.5

    def __post_init__(self):
        if self.method not in ("eagle2", "dyspec", "ddd"):
            raise ValueError(f"DynamicTree: method must be 'eagle2', 'dyspec' or 'ddd', got {self.method!r}")
        self.budget = check_int("DynamicTree", "budget", self.budget, 1, MAX_TREE_NODES - 1)
        self.top_k = check_int("DynamicTree", "top_k", self.top_k, 1)
        self.depth = check_int("DynamicTree", "depth", self.depth, 1)
        self.width = check_int("DynamicTree", "width", self.width, 1)
        # A log of a probability mass is <= 0; -inf means never stop early (plain EAGLE-2).
        self.log_mass_floor = check_real(
            "DynamicTree",
            "log_mass_floor",
            self.log_mass_floor,
            float("-inf"),
            0.0,
            "a float <= 0 (log of a probability mass)",
        )
        if self.method != "dyspec":
            most = self.top_k + (self.depth - 1) * self.top_k**2
            if self.budget > most:
                raise ValueError(
                    f"DynamicTree: budget {self.budget} exceeds the {most} candidates that "
                    f"top_k={self.top_k}, depth={self.depth} produce"
                )
        self.max_nodes = self.budget + 1
        self.top_ranks = 1 if self.method == "dyspec" else self.top_k  # candidates per node (vs the vocabulary)
        fed = self.budget if self.method == "dyspec" else self.top_k * (self.depth - 1)
        self.max_fed = max(fed, 2)  # draft tokens per forward at most: fed non-root nodes (or prev + root)
        if self.method != "dyspec":  # budget is checked above; EAGLE-2 feeds top_k nodes a round
            check_tree_size("DynamicTree", "top_k * (depth - 1) fed draft tokens", self.top_k * (self.depth - 1))

    def draft_forward_sizes(self) -> list[int]:
        """prev + root, then per round the non-root nodes fed so far (the widest case: every round runs)."""
        if self.method == "dyspec":
            return [2] + [self.width * r for r in range(1, math.ceil(self.budget / self.width))]
        return [2] + [self.top_k * d for d in range(1, self.depth)]

    def propose(self, ctx: DraftContext) -> DraftTree:
        g = Growth(ctx.drafter, ctx.rows, ctx.temperature)
        if self.method == "dyspec":
            q = _dyspec(g, self.budget, self.width, ctx.gen)
            return g.finish(torch.arange(g.n, device=g.tokens.device).expand(g.tokens.shape[0], -1), q)
        floor = self.log_mass_floor if self.method == "ddd" else None
        _beam_search(g, self.top_k, self.depth, floor)
        return g.finish(g.best(min(self.budget, g.n - 1)))
