"""GPU evidence without a GPU (issue 16): every kernel compiled for sm_80 and sm_90 at the configurations
its launcher picks for a few benchmark shapes, through bench/gpu_static.py.

Fails when a kernel does not compile for either architecture, when ptxas spills at any of these
configurations, when a 16-bit (dense or paged) tree-attention dot has no tensor-core instruction, and
when a small attention tile leaves room for only one program per SM. Covers tree attention, paged tree
attention, chain/tree and ragged verification (Triton) and the compaction and slot-move kernels (CUDA).
Needs Triton's bundled ptxas-blackwell (it ships with the triton wheel), no GPU; the CUDA kernels also
need nvcc.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_static.py"


def _load_gpu_static():
    spec = importlib.util.spec_from_file_location("specdec_bench_gpu_static", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


gs = _load_gpu_static()
ARCHS = ("sm_80", "sm_90")
TRITON_KERNELS = {
    "_tree_attention_fwd_kernel",
    "tree_attention_combine_kernel",
    "_paged_tree_attention_fwd_kernel",
    "verify_kernel",
    "ragged_verify_kernel",
}
ATTN_FWD = ("_tree_attention_fwd_kernel", "_paged_tree_attention_fwd_kernel")

needs_ptxas = pytest.mark.skipif(
    gs.ptxas_blackwell_path() is None,
    reason="Triton's bundled ptxas-blackwell is absent (it ships with the triton wheel): cannot compile for sm_90",
)


@pytest.fixture(scope="module")
def triton_rows():
    # A compile failure raises here, with the compiler's output, and fails every test that uses it.
    return gs.compile_report(gs.quick_cases(), archs=ARCHS)


def _block_m(row) -> int:
    return int(row["config"].split("BLOCK_M=")[1].split()[0])


@needs_ptxas
@pytest.mark.slow
def test_every_triton_kernel_compiles_for_both_architectures(triton_rows):
    for arch in ARCHS:
        assert {r["kernel"] for r in triton_rows if r["arch"] == arch} == TRITON_KERNELS, arch
    # the quick cases reach every tile size pick_config uses for 16-bit head_dim 128
    for arch in ARCHS:
        fwd = [r for r in triton_rows if r["arch"] == arch and r["kernel"] == "_tree_attention_fwd_kernel"]
        assert {_block_m(r) for r in fwd} == {16, 32, 128}, arch
        paged = [r for r in triton_rows if r["arch"] == arch and r["kernel"] == "_paged_tree_attention_fwd_kernel"]
        assert {_block_m(r) for r in paged} == {16, 128}, arch  # n_b = 1 and 64 (x GQA group 4)
        # n_b = 1 over 8k: too few programs to fill the GPU, so the launcher splits K (and combines)
        assert any("SPLIT=1" in r["config"] for r in paged), arch


@needs_ptxas
@pytest.mark.slow
def test_no_register_spills_at_benchmark_configurations(triton_rows):
    spills = [p for p in gs.problems(triton_rows) if "spill" in p]
    assert spills == [], "\n".join(spills)
    for r in triton_rows:  # ptxas's count and the SASS agree: no local-memory stores or loads at all
        assert r["spill_stores"] == r["spill_loads"] == r["stl"] == r["ldl"] == 0, r


@needs_ptxas
@pytest.mark.slow
def test_16bit_attention_uses_tensor_cores(triton_rows):
    fwd = [r for r in triton_rows if r["kernel"] in ATTN_FWD]
    assert {r["kernel"] for r in fwd} == set(ATTN_FWD)
    assert all(r["mma_expected"] for r in fwd)  # the quick cases are all fp16/bf16
    for r in fwd:
        assert r["hmma"] + r["hgmma"] > 0, f"no tensor-core MMA: {r}"
        if r["arch"] == "sm_90" and _block_m(r) == 128:
            assert r["hgmma"] > 0, f"the 128-row tile should use Hopper's wgmma: {r}"
    # nothing else has a dot: an MMA there would mean a kernel changed without this test knowing
    assert all(r["hmma"] == r["hgmma"] == 0 for r in triton_rows if r["kernel"] not in ATTN_FWD)


@needs_ptxas
@pytest.mark.slow
def test_small_attention_tiles_fit_more_than_one_program_per_sm(triton_rows):
    assert all(r["occupancy"] >= 1 for r in triton_rows), [r for r in triton_rows if r["occupancy"] < 1]
    small = [r for r in triton_rows if r["kernel"] in ATTN_FWD and _block_m(r) <= 32]
    assert small and all(r["occupancy"] >= 2 for r in small), small


@pytest.mark.skipif(gs.nvcc_path() is None, reason="nvcc not found: the CUDA kernels cannot be compiled")
def test_cuda_kernels_compile_without_spills():
    rows = gs.cuda_report(archs=ARCHS)
    assert {r["arch"] for r in rows} == set(ARCHS)
    assert {r["kernel"] for r in rows} == {"compact_kv_kernel (CUDA)", "move_kv_slots_kernel (CUDA)"}
    assert all(r["spill_stores"] == r["spill_loads"] == 0 for r in rows), rows
    assert all(r["occupancy"] >= 2 for r in rows), rows
    # the cases' bf16 rows (256 / 2048 bytes) move as 16-byte vectors: one such row per source and arch
    used = [r for r in rows if r["cases"]]
    assert len(used) == 2 * len(ARCHS) and all(r["config"].startswith("16-byte") for r in used)
    move = [r for r in used if r["kernel"].startswith("move_kv")]
    assert {r["grid_programs"][0] for r in move} == {2 * 32 * 2}  # 64 buffers x 2 slices of 64 uint4


@pytest.mark.skipif(gs.demangler_path() is None, reason="no C++ demangler (cu++filt or c++filt)")
def test_kernel_names_do_not_depend_on_the_checkout_path():
    # nvcc names an anonymous namespace after the source's path: in one checkout the hash ended in digits
    # that ran into the kernel name's length prefix ("..._369bc8cf17compact_kv_kernel"), in another not
    hashes = ("9d33226a_18_compact_kv_cuda_cu_369bc8cf", "0b924095_15_move_kv_cuda_cu_2f6a1c3e")
    mangled = [
        f"_ZN7specdec{len('_GLOBAL__N__' + h)}_GLOBAL__N__{h}17compact_kv_kernelI5uint4EEvPT_NS_8IndexPtrES5_S5_lllll"
        for h in hashes
    ] + ["_ZN7specdec12_GLOBAL__N__020move_kv_slots_kernelIhEEvNS_11MoveBuffersEllll"]
    parsed = [gs._kernel_name_and_vector(d) for d in gs.demangle(mangled)]
    assert parsed == [("compact_kv_kernel", "uint4")] * 2 + [("move_kv_slots_kernel", "unsigned char")]
    assert gs._VEC_BYTES["uint4"] == 16


def test_occupancy_follows_the_cuda_limits():
    h100, a100 = gs.ARCHS["sm_90"], gs.ARCHS["sm_80"]
    assert gs.occupancy(32, 0, 8, h100)[0] == 8  # 2048 threads per SM (registers allow the same)
    assert gs.occupancy(64, 0, 4, h100)[0] == 8  # 64 regs x 128 threads: 8 blocks of 8192 registers
    assert gs.occupancy(255, 0, 8, h100) == (1, "regs")
    assert gs.occupancy(33, 0, 4, h100)[0] == 12  # 33 regs round up to 40 per thread (256 per warp)
    assert gs.occupancy(100, 100 * 1024, 4, h100) == (2, "smem")  # 228 KB / (100 KB + 1 KB reserved)
    assert gs.occupancy(100, 100 * 1024, 4, a100) == (1, "smem")  # 164 KB
    assert gs.occupancy(100, 200 * 1024, 4, a100)[0] == 0  # above sm_80's 163 KB per block


def test_ptxas_log_parsing():
    log = (
        "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
        "ptxas info    : Function properties for k\n"
        "    216 bytes stack frame, 256 bytes spill stores, 248 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 216 bytes cumulative stack size\n"
    )
    assert gs.parse_ptxas_log(log) == dict(regs=255, stack=216, spill_stores=256, spill_loads=248)
    with pytest.raises(RuntimeError):
        gs.parse_ptxas_log("ptxas fatal : Unresolved extern function")


def test_roofline_bounds():
    h100 = gs.DEVICES["H100"]
    # the anchor case: 32 sequences x (9 target + 8 draft rows) x 128256 fp32, memory-bound on any GPU
    nbytes, flops = gs.verify_roofline(gs.VerifyCase("chain", 32, 9, "sampled", False))
    assert 32 * 17 * 128256 * 4 <= nbytes < 32 * 17 * 128256 * 4 * 1.001 and flops == 0
    t, what = gs.bound_us(nbytes, flops, h100)
    assert what == "memory" and t == pytest.approx(nbytes / 3.35e12 * 1e6)
    # one tree node over a 32k prefix reads 2 x 8 heads x 32769 x 128 x 2 bytes of K/V: memory-bound
    nb, fl = gs.attention_roofline(gs.AttnCase(1, 32768, "bf16"))
    assert nb >= 2 * 8 * 32769 * 128 * 2 and gs.bound_us(nb, fl, h100)[1] == "memory"
    # 256 nodes (1024 query rows) over the same prefix: 4 * N FLOP per K/V byte, past H100's ridge (~295)
    nb, fl = gs.attention_roofline(gs.AttnCase(256, 32768, "bf16"))
    assert gs.bound_us(nb, fl, h100)[1] == "compute"
