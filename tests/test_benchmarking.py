"""The benchmark toolkit (specdec_kernels.benchmarking): quantiles of a fake clock, the throughput
arithmetic, the argument checks, the machine line, the table writer and the script importer; and the
rank correlation of the end-to-end benchmark (specdec.bench). Sleep-free and fast: exact checks use a
fake clock, the few real measurements time microsecond-long work."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import requires_cuda
from specdec_kernels import benchmarking as bm


def fake_clock(durations):
    """A timer whose successive (start, stop) readings are ``durations`` apart, in order."""
    ticks = iter([x for d in durations for x in (0.0, d)])
    return lambda: next(ticks)


def test_measure_quantiles_of_a_fake_clock():
    # Samples 1..11 s (shuffled): median 6, and the linear-interpolation quantiles p10 = 2, p90 = 10.
    durations = [7.0, 1.0, 11.0, 3.0, 9.0, 5.0, 2.0, 10.0, 4.0, 8.0, 6.0]
    calls = []
    t = bm.measure(lambda: calls.append(1), warmup=3, repeats=len(durations), timer=fake_clock(durations))
    assert len(calls) == 3 + len(durations)  # warm-up calls are made and not timed
    assert t.samples_s == tuple(durations)
    assert (t.p10_s, t.median_s, t.p90_s) == (2.0, 6.0, 10.0)
    assert t.quantile(0.25) == 3.5  # between the 3rd (3 s) and 4th (4 s) order statistics
    assert t.quantile(0.0) == 1.0 and t.quantile(1.0) == 11.0


def test_measure_number_divides_each_sample():
    calls = []
    t = bm.measure(lambda: calls.append(1), warmup=0, repeats=2, number=4, timer=fake_clock([8.0, 2.0]))
    assert len(calls) == 8
    assert t.samples_s == (2.0, 0.5)


@pytest.mark.parametrize("kw", [dict(warmup=-1), dict(repeats=0), dict(number=0)])
def test_measure_rejects_bad_counts(kw):
    calls = []
    with pytest.raises(ValueError, match=next(iter(kw))):
        bm.measure(lambda: calls.append(1), **kw)
    assert not calls  # checked before any call


def test_quantile_rejects_out_of_range():
    with pytest.raises(ValueError, match="q must be"):
        bm.Timing((1.0, 2.0)).quantile(1.5)


def test_real_clock_samples_are_positive_and_ordered():
    t = bm.measure(lambda: torch.ones(64).sum(), warmup=1, repeats=5)
    assert len(t.samples_s) == 5 and min(t.samples_s) > 0
    assert t.p10_s <= t.median_s <= t.p90_s


def test_throughput_arithmetic():
    assert bm.gbps(3e9, 1.5) == pytest.approx(2.0)
    assert bm.gbps(1 << 30, 1e-3) == pytest.approx(1073.741824)
    assert bm.tflops(4e12, 0.5) == pytest.approx(8.0)
    assert bm.tflops(1e9, 1e-6) == pytest.approx(1000.0)
    for f in (bm.gbps, bm.tflops):
        with pytest.raises(ValueError, match="seconds"):
            f(1.0, 0.0)


def test_copy_bandwidth_is_positive_on_cpu():
    assert bm.copy_bandwidth_gbps(1 << 16, "cpu", repeats=3) > 0


def test_machine_description_names_hardware_and_versions():
    line = bm.machine_description("cpu")
    assert line.startswith("CPU ") and "cores" in line
    assert f"torch {torch.__version__}" in line and "triton" in line and "threads" in line


@requires_cuda
def test_measure_cuda_events():
    x = torch.ones(1 << 20, device="cuda")
    t = bm.measure(lambda: x.mul_(1.0), warmup=2, repeats=5, device="cuda")
    assert len(t.samples_s) == 5 and min(t.samples_s) > 0
    assert torch.cuda.get_device_name() in bm.machine_description("cuda")


def test_markdown_table():
    text = bm.markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]], align="rl")
    assert text.splitlines() == ["| a | b |", "|---:|---|", "| 1 | x |", "| 2.5 | y |"]
    assert bm.markdown_header(["a", "b"])[1] == "|---|---|"
    with pytest.raises(ValueError, match="align"):
        bm.markdown_header(["a", "b"], align="l")
    with pytest.raises(ValueError, match="align"):
        bm.markdown_header(["a"], align="c")


def test_import_script(tmp_path):
    script = tmp_path / "some_script.py"
    script.write_text("VALUE = 3\nif __name__ == '__main__':\n    raise SystemExit('ran as main')\n")
    mod = bm.import_script(script)
    assert mod.VALUE == 3
    assert bm.import_script(str(script)) is mod


def test_spearman_of_the_end_to_end_benchmark():
    from specdec.bench import _spearman

    assert _spearman([1.0, 2.0, 3.0, 4.0], [10.0, 40.0, 90.0, 160.0]) == pytest.approx(1.0)  # monotone
    assert _spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # ties share their average rank: ranks (1.5, 1.5, 3) vs (1, 2, 3) -> 1.5 / sqrt(1.5 * 2) = sqrt(3) / 2
    assert _spearman([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(3**0.5 / 2)
    for a, b in (([5.0, 5.0, 5.0], [1.0, 2.0, 3.0]), ([1.0], [2.0]), ([], [])):
        assert math.isnan(_spearman(a, b))  # undefined: constant input or fewer than two pairs
    with pytest.raises(ValueError, match="pair up"):
        _spearman([1.0, 2.0], [1.0])
