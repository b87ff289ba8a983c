"""Each benchmark's --quick mode end to end: files written, columns present, numbers sane.

No timing thresholds: only that times are positive, ratios equal the ratio of the
measured columns, byte counts are positive and the headline is the last line printed.
"""

from __future__ import annotations

import json
import math
import os
import re

import pyarrow.parquet as pq
import pytest


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def _files(out, name, pngs=(None,)):
    assert (out / f"{name}.md").read_text().startswith("# ")
    assert "machine:" in (out / f"{name}.md").read_text()
    for png in pngs:
        assert (out / f"{png or name}.png").read_bytes()[:4] == b"\x89PNG"
    return pq.read_table(out / f"{name}.parquet").to_pylist()


def test_crypto_quick(tmp_path, capsys):
    from benchmarks import crypto

    assert crypto.main(["--quick", "--values", "20000", "--clients", "2",
                        "--out", str(tmp_path)]) == 0
    last = _last_line(capsys)
    assert re.fullmatch(r"crypto secure: fedsim/bare encrypt = \d+\.\d\d  decrypt = \d+\.\d\d",
                        last)
    rows = _files(tmp_path, "crypto")
    assert {r["profile"] for r in rows} == {"secure", "fast"}
    assert {r["step"] for r in rows} == set(crypto.STEPS)
    for r in rows:
        assert r["seconds"] > 0 and r["values_per_s"] > 0 and r["bytes_per_value"] > 0
        bare = next(b for b in rows if b["profile"] == r["profile"] and b["step"] == r["step"]
                    and b["path"] == "bare")
        expected = r["values_per_s"] / bare["values_per_s"] if r["path"] == "fedsim" else 1.0
        assert math.isclose(r["fedsim_over_bare"], expected, rel_tol=1e-9)
        # Decrypted sums are right: error within the context's stated bound.
        assert 0 <= r["max_abs_error"] <= r["error_bound"]
    head = next(r for r in rows if r["profile"] == "secure" and r["step"] == "encrypt"
                and r["path"] == "fedsim")
    assert f"encrypt = {head['fedsim_over_bare']:.2f}" in last
    assert {r["profile"]: r["flooding"] for r in rows} == {"secure": True, "fast": False}
    text = (tmp_path / "crypto.md").read_text()
    assert "fast (no flooding: not provably secure)" in text and "verify / partial decrypt" in text


def test_overhead_quick_inprocess(tmp_path, capsys):
    from benchmarks import overhead

    assert overhead.main(["--quick", "--backend", "inprocess", "--rounds", "1",
                          "--out", str(tmp_path)]) == 0
    last = _last_line(capsys)
    m = re.fullmatch(r"overhead he-secure/plaintext = (\d+\.\d\d)  he-fast/plaintext = "
                     r"(\d+\.\d\d) \(he-fast: no flooding, not provably secure\)", last)
    assert m
    rows = _files(tmp_path, "overhead")
    assert {r["variant"] for r in rows} == set(overhead.VARIANTS)
    assert sum(r["warmup"] for r in rows) == len(overhead.VARIANTS)
    for r in rows:
        assert r["wall_s"] > 0 and r["bytes_up_per_client"] > 0
    summary = {r["variant"]: r for r in pq.read_table(
        tmp_path / "overhead_summary.parquet").to_pylist()}
    base = summary["plaintext"]["median_s"]
    for s in summary.values():
        assert s["min_s"] <= s["median_s"] <= s["max_s"]
        assert math.isclose(s["overhead"], s["median_s"] / base, rel_tol=1e-9)
        # the CPU floor: the machine's CPU-seconds per round over its cores, per plaintext
        assert s["cpu_s"] > 0 and 0 < s["cpu_busy"]
        assert math.isclose(s["cpu_floor_overhead"], s["cpu_s"] / overhead.CORES / base,
                            rel_tol=1e-9)
    assert m.group(1) == f"{summary['he-secure']['overhead']:.2f}"
    # Encrypted uploads are larger than the float64 plaintext payload.
    assert summary["he-secure"]["bytes_up_per_client"] > \
        summary["plaintext"]["bytes_up_per_client"]
    assert any("epsilon" in r and r["epsilon"] > 0 for r in rows
               if r["variant"] == "he-secure-dp")


def test_scaling_quick_inprocess(tmp_path, capsys):
    from benchmarks import scaling

    assert scaling.main(["--quick", "--backend", "inprocess", "--out", str(tmp_path)]) == 0
    assert _last_line(capsys).startswith("scaling slopes: clients = ")
    rows = _files(tmp_path, "scaling")
    assert {r["sweep"] for r in rows} == {"clients", "model", "key_holders"}
    for r in rows:
        assert r["median_s"] > 0 and r["object_store_bytes_per_round"] > 0
    clients = sorted((r for r in rows if r["sweep"] == "clients"), key=lambda r: r["x"])
    assert [r["clients_per_round"] for r in clients] == [2, 3]
    # More clients upload more ciphertext bytes.
    assert clients[1]["object_store_bytes_per_round"] > clients[0]["object_store_bytes_per_round"]
    models = sorted((r for r in rows if r["sweep"] == "model"), key=lambda r: r["x"])
    assert models[0]["num_params"] < models[1]["num_params"]


def test_many_clients_quick_inprocess(tmp_path, capsys):
    from benchmarks import many_clients

    assert many_clients.main(["--quick", "--backend", "inprocess", "--clients", "30",
                              "--rounds", "3", "--out", str(tmp_path)]) == 0
    assert _last_line(capsys).startswith("many_clients: fedsim plaintext ")
    rows = _files(tmp_path, "many_clients")
    assert [r["mode"] for r in rows] == ["plaintext", "he-secure"]
    for r in rows:
        assert r["total_s"] >= r["startup_s"] + r["rounds_s"] - 1e-6
        assert r["s_per_round"] > 0 and 0 <= r["accuracy"] <= 1 and 0 <= r["auc"] <= 1
    # Encryption must not change the model beyond CKKS noise: same sampled clients,
    # same training, so the two modes score (nearly) alike.
    assert abs(rows[0]["accuracy"] - rows[1]["accuracy"]) <= 0.01


def test_dp_clients_quick(tmp_path, capsys):
    from benchmarks import dp_clients

    assert dp_clients.main(["--quick", "--out", str(tmp_path)]) == 0
    assert "of no DP" in _last_line(capsys)
    rows = pq.read_table(tmp_path / "dp_clients.parquet").to_pylist()
    assert [(r["per_round"], r["dp"]) for r in rows] == [(10, False), (10, True),
                                                         (40, False), (40, True)]
    for r in rows:
        assert 0 <= r["auc"] <= 1
        if r["dp"]:  # the epsilon spent is the target's, against the observer
            assert 0 < r["epsilon"] <= 2.0 and r["noise_multiplier"] > 0
            nodp = next(x for x in rows if x["per_round"] == r["per_round"] and not x["dp"])
            assert r["gap_to_no_dp"] == pytest.approx(nodp["auc"] - r["auc"])
    assert (tmp_path / "dp_clients.png").read_bytes()[:4] == b"\x89PNG"
    assert "Client-level DP against clients per round" in (
        tmp_path / "dp_clients.md").read_text()


def test_sites_quick(tmp_path, capsys):
    """Both standardizations run with every baseline; the checks follow the numbers."""
    from benchmarks import sites

    assert sites.main(["--quick", "--out", str(tmp_path)]) == 0
    assert "within 0.01 of centralized" in _last_line(capsys)
    rows = _files(tmp_path, "sites")
    assert [r["standardize"] for r in rows] == ["per_hospital", "federated"]
    for r in rows:
        assert r["minus_best_local"] == pytest.approx(r["federated_auc"] - r["best_local_auc"])
        assert r["beats_best_local"] == (r["federated_auc"] > r["best_local_auc"])
        assert r["within_centralized"] == (r["federated_auc"] >= r["centralized_auc"] - 0.01)
    assert (tmp_path / "run-federated" / "statistics.json").is_file()
    assert not (tmp_path / "run-per_hospital" / "statistics.json").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_overhead_and_many_clients_on_ray(ray_session, tmp_path, capsys):
    from benchmarks import many_clients, overhead

    assert overhead.main(["--quick", "--rounds", "1", "--variants", "plaintext,he-fast",
                          "--deployment", "bandwidth=100Mbit,latency=20ms",
                          "--out", str(tmp_path / "o")]) == 0
    last = _last_line(capsys)
    # The deployment model replayed every measured round from its parties' CPU-seconds.
    md = (tmp_path / "o" / "overhead.md").read_text()
    assert "### own machines, 1 core(s) each, 100Mbit, 20 ms" in md
    projected = pq.read_table(tmp_path / "o" / "deployment.parquet").to_pylist()
    assert [r["variant"] for r in projected] == ["plaintext", "he-fast"]
    for r in projected:
        assert r["here_s"] > 0 and r["d0_s"] > r["d0:client compute"] > 0
        # Both are read in clock ticks: each party's user and system time at both ends of
        # the round, and the machine's counters likewise, so a small round's party total
        # can exceed the machine's by a few ticks (CI saw 0.11 vs 0.10 s).
        cost = json.loads(r["cost"])
        parties = len(cost["clients"]) + len(cost["holders"]) + 2
        ticks = (2 * parties + 10) / os.sysconf("SC_CLK_TCK")
        assert 0 < r["party_cpu_s"] <= r["machine_cpu_s"] * 1.05 + ticks
    assert projected[1]["d0:partial decryption"] > 0
    assert last.startswith("overhead he-secure/plaintext = nan  he-fast/")
    assert last.endswith("(he-fast: no flooding, not provably secure)")
    assert ray_session.is_initialized()  # the benchmark reused the session's Ray
    assert many_clients.main(["--quick", "--clients", "30", "--rounds", "2",
                              "--out", str(tmp_path / "m")]) == 0
    rows = pq.read_table(tmp_path / "m" / "many_clients.parquet").to_pylist()
    assert all(r["backend"] == "ray" and r["s_per_round"] > 0 for r in rows)


@pytest.mark.parametrize("argv, said", [
    (["--deployment", "bandwidth=fast"], "bandwidth 'fast' needs a unit"),
    (["--deployment", "bandwidth=1Gbit", "--backend", "inprocess"],
     "--deployment needs --backend ray"),
])
def test_overhead_refuses_a_bad_deployment_before_any_work(argv, said, capsys):
    from benchmarks import overhead

    with pytest.raises(SystemExit) as stopped:
        overhead.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
