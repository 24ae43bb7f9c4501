"""compact_kv_cache (C++ on CPU, CUDA where a GPU exists) against the plain PyTorch reference."""

import pytest
import torch

import specdec_kernels as sk
from conftest import requires_cuda

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def random_case(gen, L, B, H, S, D, M, dtype, device="cpu", counts=None, overlap=True):
    """A cache plus valid indices: per sequence a prefix, then kept rows drawn from the tail.

    overlap=True picks sources right after the destination (ranges overlap, the hard in-place case);
    overlap=False puts every source past the last destination.
    """
    cache = torch.randn(L, 2, B, H, S, D, generator=gen).to(dtype)
    src = torch.zeros(B, M, dtype=torch.int64)
    dst = torch.zeros(B, dtype=torch.int64)
    cnt = torch.zeros(B, dtype=torch.int64)
    for b in range(B):
        n = int(counts[b]) if counts is not None else int(torch.randint(0, M + 1, (1,), generator=gen))
        window = M + 3  # the tree region holds M + 3 slots; n of them are kept
        d = int(torch.randint(0, S - window - (0 if overlap else M) + 1, (1,), generator=gen))
        first = d if overlap else d + M
        picks = torch.randperm(window, generator=gen)[:n].sort().values + first
        src[b, :n] = picks
        # padding past counts[b] is arbitrary: the op must ignore it
        src[b, n:] = torch.randint(-5, 2 * S, (M - n,), generator=gen)
        dst[b], cnt[b] = d, n
    return cache.to(device), src.to(device), dst.to(device), cnt.to(device)


def run_both(cache, src, dst, cnt):
    expected = cache.clone()
    sk.compact_kv_cache_reference(expected, src, dst, cnt)
    sk.compact_kv_cache(cache, src, dst, cnt)
    return cache, expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1, 9, 1, 1), (3, 5, 2, 37, 7, 11), (2, 4, 3, 64, 16, 8)])
def test_matches_reference_cpu(dtype, overlap, shape):
    L, B, H, S, D, M = shape
    gen = torch.Generator().manual_seed(hash((dtype, overlap, shape)) % 2**31)
    cache, expected = run_both(*random_case(gen, L, B, H, S, D, M, dtype, overlap=overlap))
    assert torch.equal(cache, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_counts_zero_one_and_full(dtype):
    gen = torch.Generator().manual_seed(7)
    L, B, H, S, D, M = 2, 3, 2, 40, 5, 6
    case = random_case(gen, L, B, H, S, D, M, dtype, counts=[0, 1, M])
    before = case[0].clone()
    cache, expected = run_both(*case)
    assert torch.equal(cache, expected)
    # sequence 0 kept nothing: its plane is untouched; the rows outside the destinations are too
    assert torch.equal(cache[:, :, 0], before[:, :, 0])
    d2 = int(case[2][2])
    assert torch.equal(cache[:, :, 2, :, :d2], before[:, :, 2, :, :d2])


# (src_pos, dst_pos, counts) dtypes: all int32 (what serving runtimes often hold), and mixes
INDEX_DTYPE_MIXES = [
    (torch.int32,) * 3,
    (torch.int32, torch.int64, torch.int32),
    (torch.int64, torch.int32, torch.int64),
]


@pytest.mark.parametrize("dtypes", INDEX_DTYPE_MIXES, ids=["int32", "mixed-a", "mixed-b"])
def test_int32_and_mixed_indices_match_reference(dtypes):
    gen = torch.Generator().manual_seed(23)
    cache, src, dst, cnt = random_case(gen, 3, 5, 2, 37, 7, 11, torch.float16)
    expected = cache.clone()
    sk.compact_kv_cache_reference(expected, src, dst, cnt)
    sk.compact_kv_cache(cache, *(t.to(dt) for t, dt in zip((src, dst, cnt), dtypes)))
    assert torch.equal(cache, expected)
    # unchecked: the same result
    cache2 = random_case(torch.Generator().manual_seed(23), 3, 5, 2, 37, 7, 11, torch.float16)[0]
    sk.compact_kv_cache(cache2, *(t.to(dt) for t, dt in zip((src, dst, cnt), dtypes)), check=False)
    assert torch.equal(cache2, expected)


def test_moves_rows_to_contiguous_positions_exactly():
    # Rows tagged with their position: after compaction, slot dst+i must hold the tag of src[i].
    L, B, H, S, D = 2, 2, 3, 20, 4
    cache = torch.arange(S, dtype=torch.float32).view(1, 1, 1, 1, S, 1).expand(L, 2, B, H, S, D).contiguous()
    src = torch.tensor([[5, 6, 9, 13], [12, 14, 0, 0]])
    dst = torch.tensor([5, 10])
    cnt = torch.tensor([4, 2])
    sk.compact_kv_cache(cache, src, dst, cnt)
    assert cache[0, 0, 0, 0, 5:9, 0].tolist() == [5, 6, 9, 13]
    assert cache[1, 1, 1, 2, 10:12, 0].tolist() == [12, 14]
    assert cache[0, 1, 1, 0, :10, 0].tolist() == list(range(10))


def _valid_small():
    gen = torch.Generator().manual_seed(3)
    return random_case(gen, 2, 2, 2, 24, 4, 5, torch.float32, counts=[3, 5])


BAD_INPUTS = [
    ("cache rank", lambda c, s, d, n: (c[0], s, d, n), ValueError, "cache must have shape"),
    ("cache kv dim", lambda c, s, d, n: (c[:, :1], s, d, n), ValueError, "cache must have shape"),
    ("src dtype", lambda c, s, d, n: (c, s.to(torch.int16), d, n), TypeError, "src_pos must be int32 or int64"),
    ("dst dtype", lambda c, s, d, n: (c, s, d.float(), n), TypeError, "dst_pos must be int32 or int64"),
    ("counts dtype", lambda c, s, d, n: (c, s, d, n.to(torch.uint8)), TypeError, "counts must be int32 or int64"),
    (
        "int32 src out of range",
        lambda c, s, d, n: (c, _set(s, 1, 4, 24).int(), d.int(), n.int()),
        ValueError,
        "out of range",
    ),
    ("src batch", lambda c, s, d, n: (c, s[:1], d, n), ValueError, "src_pos must have shape"),
    ("dst rank", lambda c, s, d, n: (c, s, d[:, None], n), ValueError, "dst_pos must have shape"),
    ("counts batch", lambda c, s, d, n: (c, s, d, n[:1]), ValueError, "counts must have shape"),
    ("counts > M", lambda c, s, d, n: (c, s, d, torch.tensor([3, 6])), ValueError, "counts\\[1\\]"),
    ("counts < 0", lambda c, s, d, n: (c, s, d, torch.tensor([-1, 5])), ValueError, "counts\\[0\\]"),
    ("src out of range", lambda c, s, d, n: (c, _set(s, 1, 4, 24), d, n), ValueError, "out of range"),
    (
        "src negative",
        lambda c, s, d, n: (c, _set(s, 0, 0, -1), torch.tensor([0, int(d[1])]), n),
        ValueError,
        "out of range",
    ),
    ("not ascending", lambda c, s, d, n: (c, _swap(s, 1, 2, 3), d, n), ValueError, "strictly ascending"),
    ("src before dst", lambda c, s, d, n: (c, s, d + 1, n), ValueError, "before its destination"),
    ("non-contiguous", lambda c, s, d, n: (c.transpose(4, 5), s, d, n), ValueError, "contiguous"),
]


def _set(t, b, i, v):
    t = t.clone()
    t[b, i] = v
    return t


def _swap(t, b, i, j):
    t = t.clone()
    t[b, i], t[b, j] = t[b, j].clone(), t[b, i].clone()
    return t


@pytest.mark.parametrize("name,mutate,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_and_leaves_cache_unchanged(name, mutate, exc, match):
    args = mutate(*_valid_small())
    before = args[0].clone()
    with pytest.raises(exc, match=match):
        sk.compact_kv_cache(*args)
    assert torch.equal(args[0], before)


def test_device_mismatch_is_rejected():
    cache, s, d, n = _valid_small()
    meta = s.to("meta")
    with pytest.raises(ValueError, match="src_pos must be on the cache's device"):
        sk.compact_kv_cache(cache, meta, d, n)
    with pytest.raises(ValueError, match="counts must be on the cache's device"):
        torch.ops.specdec.compact_kv_cache(cache.to("meta"), s.to("meta"), d.to("meta"), n, True)


def test_opcheck():
    gen = torch.Generator().manual_seed(11)
    for case in [random_case(gen, 2, 3, 2, 30, 8, 4, dt) for dt in DTYPES]:
        torch.library.opcheck(torch.ops.specdec.compact_kv_cache.default, case)
    cache, src, dst, cnt = random_case(gen, 2, 3, 2, 30, 8, 4, torch.float32)
    torch.library.opcheck(torch.ops.specdec.compact_kv_cache.default, (cache, src.int(), dst, cnt.int()))


def test_torch_compile_fullgraph():
    gen = torch.Generator().manual_seed(5)
    cache, src, dst, cnt = random_case(gen, 2, 2, 2, 32, 8, 5, torch.float32)
    expected = cache.clone()
    sk.compact_kv_cache_reference(expected, src, dst, cnt)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(cache, src, dst, cnt):
        torch.ops.specdec.compact_kv_cache(cache, src, dst, cnt, False)
        return cache.sum()

    total = step(cache, src, dst, cnt)
    assert torch.equal(cache, expected)
    assert torch.allclose(total, expected.sum())


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("overlap", [True, False])
def test_matches_reference_cuda(dtype, overlap):
    from specdec_kernels._ops import has_cuda_kernels

    assert has_cuda_kernels(), "torch has CUDA but the extension was built without the CUDA kernel"
    gen = torch.Generator().manual_seed(17)
    for shape in [(3, 5, 2, 37, 7, 11), (32, 8, 8, 300, 128, 64), (2, 3, 3, 50, 3, 9)]:
        L, B, H, S, D, M = shape
        cpu_case = random_case(gen, L, B, H, S, D, M, dtype, overlap=overlap)
        expected = cpu_case[0].clone()
        sk.compact_kv_cache_reference(expected, *cpu_case[1:])
        gpu = [t.cuda() for t in cpu_case]
        int32 = [gpu[0].clone()] + [t.int() for t in gpu[1:]]
        sk.compact_kv_cache(*gpu)
        assert torch.equal(gpu[0].cpu(), expected)
        sk.compact_kv_cache(*int32, check=False)
        assert torch.equal(int32[0].cpu(), expected)


@requires_cuda
def test_opcheck_cuda():
    gen = torch.Generator().manual_seed(19)
    case = [t.cuda() for t in random_case(gen, 2, 3, 2, 30, 64, 4, torch.bfloat16)]
    torch.library.opcheck(torch.ops.specdec.compact_kv_cache.default, case)
