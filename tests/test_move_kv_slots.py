"""move_kv_slots (C++ on CPU, CUDA where a GPU exists) against its PyTorch reference, in vLLM and SGLang
cache layouts, and accepted_path_slots on block tables built the way vLLM builds them."""

import textwrap

import pytest
import torch

import specdec_kernels as sk
from conftest import requires_cuda, run_isolated

HKV, D = 3, 5  # odd sizes: rows of 15 elements, so the CUDA kernel cannot always use 16-byte vectors


# --- cache layouts -----------------------------------------------------------------------------------


def make_caches(gen, layout, L, num_slots, page_size, dtype):
    """(caches as the runtime holds them, slot_dims). vLLM: K and V stacked per layer, paged; SGLang: separate
    K and V buffers per layer, flat slots."""
    if layout == "sglang":
        bufs = [torch.randn(num_slots, HKV, D, generator=gen).to(dtype) for _ in range(2 * L)]
        return bufs, 1
    shape = (2, num_slots // page_size, page_size, HKV, D)
    if layout == "vllm-list":
        return [torch.randn(*shape, generator=gen).to(dtype) for _ in range(L)], 2
    assert layout == "vllm-stacked"
    return torch.randn(L, *shape, generator=gen).to(dtype), 2


def clone_caches(caches):
    return caches.clone() if isinstance(caches, torch.Tensor) else [t.clone() for t in caches]


def caches_equal(a, b):
    a = [a] if isinstance(a, torch.Tensor) else a
    b = [b] if isinstance(b, torch.Tensor) else b
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def random_moves(gen, num_slots, N, pad=0.2):
    """N moves obeying the contract, with overlaps: distinct destinations, no source that an earlier move
    wrote, but later moves often overwrite earlier sources (drawn from a small window so they collide);
    about `pad` of them are -1 padding and a few are no-ops (src == dst)."""
    window = min(num_slots, 2 * N + 2)
    offset = int(torch.randint(0, num_slots - window + 1, (1,), generator=gen))
    written, src, dst = set(), [], []
    for _ in range(N):
        if float(torch.rand(1, generator=gen)) < pad:
            src.append(-1)
            dst.append(int(torch.randint(0, num_slots, (1,), generator=gen)))
            continue
        free_dst = [s for s in range(offset, offset + window) if s not in written]
        readable = [s for s in range(offset, offset + window) if s not in written]
        d = free_dst[int(torch.randint(0, len(free_dst), (1,), generator=gen))]
        s = readable[int(torch.randint(0, len(readable), (1,), generator=gen))]
        written.add(d)
        src.append(s)
        dst.append(d)
    return torch.tensor(src), torch.tensor(dst)


def run_both(caches, src, dst, num_moves, slot_dims, n_ref=None):
    expected = clone_caches(caches)
    sk.move_kv_slots_reference(expected, src, dst, num_moves if n_ref is None else n_ref, slot_dims=slot_dims)
    sk.move_kv_slots(caches, src, dst, num_moves, slot_dims=slot_dims)
    return caches, expected


# (layout, page_size, cache dtype, index dtype): every page size and layout once, dtypes spread over them
CASES = [
    ("vllm-list", 1, torch.float32, torch.int64),
    ("vllm-list", 16, torch.bfloat16, torch.int32),
    ("vllm-list", 5, torch.float16, torch.int64),
    ("vllm-stacked", 16, torch.float16, torch.int64),
    ("vllm-stacked", 5, torch.float32, torch.int32),
    ("sglang", 1, torch.bfloat16, torch.int64),
    ("sglang", 1, torch.float32, torch.int32),
]


@pytest.mark.parametrize("layout,page_size,dtype,index_dtype", CASES)
def test_matches_reference_cpu(layout, page_size, dtype, index_dtype):
    gen = torch.Generator().manual_seed(hash((layout, page_size, str(dtype))) % 2**31)
    num_slots = page_size * (7 if page_size > 1 else 45)
    caches, slot_dims = make_caches(gen, layout, 3, num_slots, page_size, dtype)
    before = clone_caches(caches)
    src, dst = random_moves(gen, num_slots, 19)
    got, expected = run_both(caches, src.to(index_dtype), dst.to(index_dtype), None, slot_dims)
    assert caches_equal(got, expected)
    assert not caches_equal(got, before)  # the case moved something


def test_rows_land_where_the_sequential_order_puts_them():
    # Slots tagged with their own index; overlapping compaction-like moves (a later move overwrites an
    # earlier move's source: 5 is read by move 0, then written by move 1), a no-op and -1 padding.
    num_slots, L = 12, 2
    cache = torch.arange(num_slots, dtype=torch.float32).view(1, 1, 4, 3, 1, 1).expand(L, 2, 4, 3, HKV, D).contiguous()
    src = torch.tensor([5, 6, 7, 9, -1, 11])
    dst = torch.tensor([4, 5, 7, 6, 0, -1])
    sk.move_kv_slots(cache, src, dst, slot_dims=2)
    tags = cache.flatten(2, 3)[..., 0, 0]  # [L, 2, num_slots]
    expected = [0, 1, 2, 3, 5, 6, 9, 7, 8, 9, 10, 11]
    assert (tags == torch.tensor(expected, dtype=torch.float32)).all()


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_num_moves_as_device_tensor_stops_there(index_dtype):
    gen = torch.Generator().manual_seed(21)
    caches, slot_dims = make_caches(gen, "vllm-list", 2, 35, 5, torch.float32)
    src, dst = random_moves(gen, 35, 12, pad=0.0)
    for n in (0, 1, 7, 12):
        for num_moves in (torch.tensor(n, dtype=index_dtype), torch.tensor([n], dtype=index_dtype), n):
            got, expected = run_both(clone_caches(caches), src.to(index_dtype), dst, num_moves, slot_dims, n_ref=n)
            assert caches_equal(got, expected), (n, num_moves)
    # the first 7 moves alone differ from all 12: the tail really was skipped (not just equal by chance)
    all_moves, _ = run_both(clone_caches(caches), src, dst, None, slot_dims)
    seven, _ = run_both(clone_caches(caches), src, dst, torch.tensor(7), slot_dims)
    assert not caches_equal(all_moves, seven)


def test_mixed_index_dtypes_agree():
    gen = torch.Generator().manual_seed(4)
    caches, slot_dims = make_caches(gen, "sglang", 2, 40, 1, torch.float16)
    src, dst = random_moves(gen, 40, 15)
    results = []
    for s_dt, d_dt, n_dt in [(torch.int64,) * 3, (torch.int32,) * 3, (torch.int32, torch.int64, torch.int32)]:
        got = clone_caches(caches)
        sk.move_kv_slots(got, src.to(s_dt), dst.to(d_dt), torch.tensor(11, dtype=n_dt), slot_dims=slot_dims)
        results.append(got)
    assert caches_equal(results[0], results[1]) and caches_equal(results[0], results[2])


# --- unchecked calls never touch memory outside the buffers (in a subprocess: a crash fails one test) ----

_UNCHECKED = textwrap.dedent("""
    import torch, specdec_kernels as sk
    g = torch.Generator().manual_seed(0)
    big = 2**62
    src = torch.tensor([3, -1, big, -big, 7, 2**31 + 3, 8, 20, -2])
    dst = torch.tensor([1, 4, 5, 6, -big, 2, big, 11, 9])
    for caches, slot_dims in [([torch.randn(2, 3, 4, 2, 3, generator=g) for _ in range(3)], 2),
                              (torch.randn(2, 2, 12, 2, 3, generator=g), 1)]:
        for n in [None, 0, 5, 9, 10, 2**40, -1, -2**40]:
            for dt in (torch.int64, torch.int32):
                num_moves = None if n is None else torch.tensor(n if dt is torch.int64 or abs(n) < 2**31 else 2**31 - 1,
                                                                dtype=dt)
                expected = [t.clone() for t in caches] if isinstance(caches, list) else caches.clone()
                sk.move_kv_slots_reference(expected, src, dst, num_moves, slot_dims=slot_dims)
                got = [t.clone() for t in caches] if isinstance(caches, list) else caches.clone()
                sk.move_kv_slots(got, src, dst, num_moves, slot_dims=slot_dims, check=False)
                same = all(map(torch.equal, got, expected)) if isinstance(got, list) else torch.equal(got, expected)
                assert same, (n, dt)
        # int32 slots past the range, too
        got = [t.clone() for t in caches] if isinstance(caches, list) else caches.clone()
        sk.move_kv_slots(got, torch.tensor([2**31 - 1, -2**31, 1], dtype=torch.int32),
                         torch.tensor([0, 1, 2**31 - 1], dtype=torch.int32), slot_dims=slot_dims, check=False)
        same = all(map(torch.equal, got, caches)) if isinstance(got, list) else torch.equal(got, caches)
        assert same
    print("ok")
""")


def test_unchecked_moves_skip_out_of_range_slots():
    run_isolated(_UNCHECKED)


# --- bad input: an error naming the argument, nothing written ------------------------------------------


def _valid():
    gen = torch.Generator().manual_seed(8)
    caches, _ = make_caches(gen, "vllm-list", 2, 20, 5, torch.float32)
    return caches, torch.tensor([7, 9, 12]), torch.tensor([5, 6, 7]), torch.tensor(3)


def _with(t, i, v):
    t = t.clone()
    t[i] = v
    return t


# (name, mutate(caches, src, dst, n) -> (caches, src, dst, n, kwargs), exception, message)
BAD_INPUTS = [
    ("empty caches", lambda c, s, d, n: ([], s, d, n, {}), ValueError, "caches must hold at least one"),
    ("caches not tensors", lambda c, s, d, n: ([1.0], s, d, n, {}), TypeError, "caches must be a tensor"),
    ("slot_dims 3", lambda c, s, d, n: (c, s, d, n, {"slot_dims": 3}), ValueError, "slot_dims must be 1"),
    ("rank too small", lambda c, s, d, n: ([t[0, 0, 0] for t in c], s, d, n, {}), ValueError, "at least 4 dims"),
    ("shapes differ", lambda c, s, d, n: ([c[0], c[1][:, :3]], s, d, n, {}), ValueError, "caches\\[1\\] has shape"),
    ("dtypes differ", lambda c, s, d, n: ([c[0], c[1].double()], s, d, n, {}), TypeError, "caches\\[1\\] has dtype"),
    (
        "non-contiguous",
        lambda c, s, d, n: ([c[0], c[1].transpose(3, 4).contiguous().transpose(3, 4)], s, d, n, {}),
        ValueError,
        "caches\\[1\\] must be contiguous",
    ),
    ("src float", lambda c, s, d, n: (c, s.float(), d, n, {}), TypeError, "src_slots must be int32 or int64"),
    ("dst int16", lambda c, s, d, n: (c, s, d.to(torch.int16), n, {}), TypeError, "dst_slots must be int32 or int64"),
    ("num_moves float", lambda c, s, d, n: (c, s, d, n.float(), {}), TypeError, "num_moves must be int32 or int64"),
    ("src 2-D", lambda c, s, d, n: (c, s[None], d[None], n, {}), ValueError, "src_slots must have shape \\[N\\]"),
    ("dst length", lambda c, s, d, n: (c, s, d[:2], n, {}), ValueError, "dst_slots must have the shape"),
    ("num_moves 2 values", lambda c, s, d, n: (c, s, d, torch.tensor([1, 2]), {}), ValueError, "one value"),
    ("num_moves > N", lambda c, s, d, n: (c, s, d, torch.tensor(4), {}), ValueError, "num_moves = 4"),
    (
        "num_moves < 0",
        lambda c, s, d, n: (c, s, d, torch.tensor(-1, dtype=torch.int32), {}),
        ValueError,
        "num_moves = -1",
    ),
    ("int num_moves > N", lambda c, s, d, n: (c, s, d, 4, {}), ValueError, "num_moves = 4"),
    ("num_moves bool", lambda c, s, d, n: (c, s, d, True, {}), TypeError, "num_moves must be None"),
    ("src past the cache", lambda c, s, d, n: (c, _with(s, 2, 20), d, n, {}), ValueError, "src_slots\\[2\\] = 20"),
    ("dst -2", lambda c, s, d, n: (c, s, _with(d, 1, -2), n, {}), ValueError, "dst_slots\\[1\\] = -2"),
    (
        "reads an earlier write",
        lambda c, s, d, n: (c, _with(s, 2, 6), d, n, {}),
        ValueError,
        "src_slots\\[2\\] = 6 is dst_slots\\[1\\]",
    ),
    (
        "duplicate destination",
        lambda c, s, d, n: (c, s, _with(d, 2, 5), n, {}),
        ValueError,
        "dst_slots\\[2\\] = 5 is also dst_slots\\[0\\]",
    ),
    (
        "device mismatch",
        lambda c, s, d, n: (c, s.to("meta"), d, n, {}),
        ValueError,
        "src_slots must be on the cache's device",
    ),
]


@pytest.mark.parametrize("name,mutate,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_and_leaves_caches_unchanged(name, mutate, exc, match):
    caches, s, d, n = _valid()
    before = clone_caches(caches)
    c, s, d, n, kwargs = mutate(caches, s, d, n)
    with pytest.raises(exc, match=match):
        sk.move_kv_slots(c, s, d, n, **{"slot_dims": 2, **kwargs})
    assert caches_equal(caches, before)


def test_violations_past_num_moves_are_ignored():
    # The contract covers the first num_moves moves only: a bad slot after them is fine.
    caches, s, d, _ = _valid()
    s, d = torch.cat([s, torch.tensor([999])]), torch.cat([d, torch.tensor([5])])
    got, expected = run_both(caches, s, d, torch.tensor(3), 2)
    assert caches_equal(got, expected)


# --- accepted_path_slots on vLLM-style block tables ------------------------------------------------------


def vllm_block_tables(gen, seq_lens_after, page_size, num_blocks, max_blocks):
    """Like vLLM's block manager: each request gets ceil(len / page_size) physical blocks from a shared,
    shuffled free list; unused block-table entries are 0 (int32, as vLLM's block_table tensor)."""
    free = torch.randperm(num_blocks, generator=gen).tolist()
    table = torch.zeros(len(seq_lens_after), max_blocks, dtype=torch.int32)
    for b, n in enumerate(seq_lens_after):
        for j in range(-(-n // page_size)):
            table[b, j] = free.pop()
    return table


def random_paths(gen, B, P):
    """Accepted paths: node 0 (the root) then an ascending random subset of the other nodes, -1 padded."""
    accept = torch.full((B, P), -1, dtype=torch.int64)
    counts = torch.zeros(B, dtype=torch.int64)
    for b in range(B):
        n = int(torch.randint(1, P + 1, (1,), generator=gen))
        rest = torch.randperm(P - 1, generator=gen)[: n - 1].sort().values + 1
        accept[b, :n] = torch.cat([torch.zeros(1, dtype=torch.int64), rest])
        counts[b] = n
    return accept, counts


@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_accepted_path_slots_compact_each_request(page_size):
    gen = torch.Generator().manual_seed(10 * page_size + 1)
    B, P, L = 4, 6, 2
    seq_lens = torch.tensor([3, 17, 0, 9])
    max_blocks = -(-(int(seq_lens.max()) + P) // page_size)
    num_blocks = B * max_blocks + 3
    table = vllm_block_tables(gen, (seq_lens + P).tolist(), page_size, num_blocks, max_blocks)
    accept, counts = random_paths(gen, B, P)
    # slots tagged with their own index, per layer and K/V a different offset
    num_slots = num_blocks * page_size
    tags = torch.arange(num_slots, dtype=torch.float32).view(num_blocks, page_size, 1, 1)
    caches = [
        (tags + 1000 * (2 * layer + torch.arange(2).view(2, 1, 1, 1, 1)))
        .expand(2, num_blocks, page_size, HKV, D)
        .contiguous()
        for layer in range(L)
    ]
    before = clone_caches(caches)

    src, dst, num_moves = sk.accepted_path_slots(accept.int(), counts, seq_lens.int(), table, page_size)
    sk.move_kv_slots(caches, src, dst, num_moves, slot_dims=2)  # check=True: the contract holds

    def slot(b, pos):  # vLLM's slot mapping
        return int(table[b, pos // page_size]) * page_size + pos % page_size

    expected = [t.flatten(1, 2).clone() for t in before]
    for b in range(B):
        for i in range(int(counts[b])):
            for layer in range(L):
                expected[layer][:, slot(b, int(seq_lens[b]) + i)] = before[layer].flatten(1, 2)[
                    :, slot(b, int(seq_lens[b]) + int(accept[b, i]))
                ]
    assert all(torch.equal(c.flatten(1, 2), e) for c, e in zip(caches, expected))
    in_place = sum(int((accept[b, : counts[b]] == torch.arange(int(counts[b]))).sum()) for b in range(B))
    assert int(num_moves) == int(counts.sum()) - in_place >= 4  # the seed gives real moves to check
    assert src.dtype == dst.dtype == torch.int64 and src.shape == dst.shape == (B * P,)
    assert (src[int(num_moves) :] == -1).all() and (dst[int(num_moves) :] == -1).all()


def test_accepted_path_slots_skips_unallocated_blocks():
    # Slots by hand from the documented mapping, page_size 2: position p -> table[p // 2] * 2 + p % 2.
    table = torch.tensor([[2, 3, -1]])
    # node 3 (position 3, slot 3*2+1 = 7) moves to position 1 (slot 2*2+1 = 5); node 6 lies past the table
    src, dst, n = sk.accepted_path_slots(torch.tensor([[0, 3, 6]]), torch.tensor([3]), torch.tensor([0]), table, 2)
    assert int(n) == 1 and src.tolist() == [7, -1, -1] and dst.tolist() == [5, -1, -1]
    # node 4 lives in block -1 (unallocated): no move; node 1 already sits at position 1: no move either
    src, dst, n = sk.accepted_path_slots(torch.tensor([[0, 4]]), torch.tensor([2]), torch.tensor([0]), table, 2)
    assert int(n) == 0 and (src == -1).all() and (dst == -1).all()
    src, dst, n = sk.accepted_path_slots(torch.tensor([[0, 1]]), torch.tensor([2]), torch.tensor([0]), table, 2)
    assert int(n) == 0


@pytest.mark.parametrize(
    "args,exc,match",
    [
        (
            (torch.tensor([[0.0]]), torch.tensor([1]), torch.tensor([0]), torch.tensor([[0]]), 4),
            TypeError,
            "accept_index",
        ),
        (
            (torch.tensor([[0]]), torch.tensor([1, 1]), torch.tensor([0]), torch.tensor([[0]]), 4),
            ValueError,
            "num_accepted must have 1 rows",
        ),
        (
            (torch.tensor([[0]]), torch.tensor([1]), torch.tensor([[0]]), torch.tensor([[0]]), 4),
            ValueError,
            "seq_lens_before must have 1 dims",
        ),
        ((torch.tensor([[0]]), torch.tensor([1]), torch.tensor([0]), torch.tensor([0]), 4), ValueError, "block_table"),
        ((torch.tensor([[0]]), torch.tensor([1]), torch.tensor([0]), torch.tensor([[0]]), 0), ValueError, "page_size"),
        (
            (torch.tensor([[0]]), torch.tensor([1]), torch.tensor([0]), torch.tensor([[0]]), 2.0),
            ValueError,
            "page_size",
        ),
        (
            (torch.tensor([[0]]), torch.tensor([1]).to("meta"), torch.tensor([0]), torch.tensor([[0]]), 4),
            ValueError,
            "num_accepted must be on",
        ),
    ],
)
def test_accepted_path_slots_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        sk.accepted_path_slots(*args)


def test_opcheck():
    gen = torch.Generator().manual_seed(12)
    for layout, dtype, num_moves in [
        ("vllm-list", torch.float32, None),
        ("vllm-stacked", torch.bfloat16, torch.tensor(4)),
        ("sglang", torch.float16, torch.tensor([4], dtype=torch.int32)),
    ]:
        caches, slot_dims = make_caches(gen, layout, 2, 20, 5, dtype)
        caches = [caches] if isinstance(caches, torch.Tensor) else caches
        src, dst = random_moves(gen, 20, 6)
        torch.library.opcheck(torch.ops.specdec.move_kv_slots.default, (caches, src, dst, num_moves, slot_dims, True))


def test_torch_compile_fullgraph():
    gen = torch.Generator().manual_seed(13)
    caches, slot_dims = make_caches(gen, "vllm-list", 2, 20, 5, torch.float32)
    src, dst = random_moves(gen, 20, 7, pad=0.0)
    expected = clone_caches(caches)
    sk.move_kv_slots_reference(expected, src, dst, 5, slot_dims=slot_dims)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(caches, src, dst, n):
        torch.ops.specdec.move_kv_slots(caches, src, dst, n, slot_dims, False)
        return sum(t.sum() for t in caches)

    total = step(caches, src, dst, torch.tensor(5))
    assert caches_equal(caches, expected)
    assert torch.allclose(total, sum(t.sum() for t in expected))


# --- CUDA ------------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("layout,page_size,dtype,index_dtype", CASES)
def test_matches_reference_cuda(layout, page_size, dtype, index_dtype):
    from specdec_kernels._ops import has_cuda_kernels

    assert has_cuda_kernels(), "torch has CUDA but the extension was built without the CUDA kernels"
    gen = torch.Generator().manual_seed(31)
    for L, num_slots, N, hd in [(3, page_size * 9, 25, (HKV, D)), (4, page_size * 40, 200, (8, 128))]:
        caches, slot_dims = make_caches(gen, layout, L, num_slots, page_size, dtype)
        if hd != (HKV, D):  # the wide case: rows of 8 x 128 need several column slices per plane
            caches = (
                torch.randn(*caches.shape[:-2], *hd, generator=gen).to(dtype)
                if isinstance(caches, torch.Tensor)
                else [torch.randn(*t.shape[:-2], *hd, generator=gen).to(dtype) for t in caches]
            )
        src, dst = random_moves(gen, num_slots, N)
        expected = clone_caches(caches)
        sk.move_kv_slots_reference(expected, src, dst, slot_dims=slot_dims)
        gpu = caches.cuda() if isinstance(caches, torch.Tensor) else [t.cuda() for t in caches]
        n = torch.tensor(N, dtype=index_dtype, device="cuda")
        sk.move_kv_slots(gpu, src.to(index_dtype).cuda(), dst.cuda(), n, slot_dims=slot_dims, check=False)
        got = gpu.cpu() if isinstance(gpu, torch.Tensor) else [t.cpu() for t in gpu]
        assert caches_equal(got, expected)


@requires_cuda
def test_cuda_more_buffers_than_one_launch_holds_and_num_moves_on_device():
    gen = torch.Generator().manual_seed(32)
    caches = [torch.randn(64, 2, 16, generator=gen).half() for _ in range(300)]  # > 256 buffers
    src, dst = random_moves(gen, 64, 30)
    expected = clone_caches(caches)
    sk.move_kv_slots_reference(expected, src, dst, 17, slot_dims=1)
    gpu = [t.cuda() for t in caches]
    sk.move_kv_slots(gpu, src.cuda(), dst.cuda(), torch.tensor([17], device="cuda"), slot_dims=1)
    assert caches_equal([t.cpu() for t in gpu], expected)


@requires_cuda
def test_cuda_unchecked_out_of_range_and_accepted_paths():
    src = torch.tensor([3, -1, 2**62, -(2**62), 7, 8], device="cuda")
    dst = torch.tensor([1, 4, 5, 6, 2**40, 9], device="cuda")
    caches = torch.randn(2, 2, 3, 4, 2, 3, device="cuda")
    expected = caches.cpu()
    sk.move_kv_slots_reference(expected, src.cpu(), dst.cpu(), 2**40, slot_dims=2)
    sk.move_kv_slots(caches, src, dst, torch.tensor(2**40, device="cuda"), slot_dims=2, check=False)
    assert torch.equal(caches.cpu(), expected)
    # the helper's output drives the kernel with no host round trip
    gen = torch.Generator().manual_seed(33)
    accept, counts = random_paths(gen, 3, 5)
    table = vllm_block_tables(gen, [9, 14, 6], 4, 20, 4)
    seq = torch.tensor([4, 9, 1])
    kv = [torch.randn(2, 20, 4, 2, 8, generator=gen) for _ in range(2)]
    expected = clone_caches(kv)
    sk.move_kv_slots(expected, *sk.accepted_path_slots(accept, counts, seq, table, 4), slot_dims=2)
    gpu = [t.cuda() for t in kv]
    s, d, n = sk.accepted_path_slots(accept.cuda(), counts.cuda(), seq.cuda(), table.cuda(), 4)
    sk.move_kv_slots(gpu, s, d, n, slot_dims=2, check=False)
    assert caches_equal([t.cpu() for t in gpu], expected)


@requires_cuda
def test_opcheck_cuda():
    gen = torch.Generator().manual_seed(34)
    caches, _ = make_caches(gen, "vllm-list", 2, 20, 5, torch.bfloat16)
    src, dst = random_moves(gen, 20, 6)
    args = ([t.cuda() for t in caches], src.cuda(), dst.cuda(), torch.tensor(5, device="cuda"), 2, True)
    torch.library.opcheck(torch.ops.specdec.move_kv_slots.default, args)
