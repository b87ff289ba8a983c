"""fedsim.telemetry: a no-op without Ray; with Ray, one record updates every metric."""

from __future__ import annotations

import sys
import time
import urllib.request

import pytest

from fedsim.learning.metrics import BinaryMetrics
from fedsim.protocol.records import RoundRecord
from fedsim.run import telemetry


def _record(**changes) -> RoundRecord:
    metrics = BinaryMetrics(n=100, positives=20, loss=0.5, auc=0.75, pr_auc=0.5,
                            balanced_accuracy=0.6, precision=0.5, recall=0.5, threshold=0.5)
    base = dict(round=3, wall_s=1.5, phases={"train": 1.0, "encrypt": 0.2}, clients=("a", "b"),
                dropped=("c",), bytes_up=2000, bytes_down=800, loss=0.4, metrics=metrics,
                extra={"epsilon": 1.25, "epsilon_participants": 1.25,
                       "epsilon_observer": 0.5})
    base.update(changes)
    return RoundRecord(**base)


class _Spy:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def set(self, value, tags):
        self.calls.append(("set", value, tags))

    def inc(self, value, tags):
        self.calls.append(("inc", value, tags))

    def observe(self, value, tags):
        self.calls.append(("observe", value, tags))


def test_without_ray_telemetry_is_a_no_op(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were never imported
    t = telemetry.RunTelemetry("r1", ciphertexts_per_update=4)
    assert not t.enabled
    t.record(_record())  # nothing to publish to, nothing raised


def test_one_record_sets_each_metric_with_run_and_role_tags(monkeypatch):
    spies = {name: _Spy() for name in telemetry.METRICS}
    monkeypatch.setattr(telemetry, "ray_active", lambda: True)
    monkeypatch.setattr(telemetry, "_make_metrics", lambda: spies)
    telemetry.RunTelemetry("r1", ciphertexts_per_update=4).record(_record())
    tags = {"run_id": "r1", "role": "coordinator"}
    assert spies["fedsim_round"].calls == [("set", 3, tags)]
    assert spies["fedsim_bytes_up"].calls == [("inc", 2000, tags)]
    assert spies["fedsim_bytes_down"].calls == [("inc", 800, tags)]
    assert spies["fedsim_ciphertexts"].calls == [("inc", 8, tags)]  # 2 clients x 4
    assert spies["fedsim_clients_active"].calls == [("set", 2, tags)]
    assert spies["fedsim_clients_dropped"].calls == [("set", 1, tags)]
    assert spies["fedsim_dropouts"].calls == [("inc", 1, tags)]
    assert spies["fedsim_epsilon"].calls == [("set", 1.25, tags)]
    assert spies["fedsim_epsilon_against"].calls == [
        ("set", 1.25, {**tags, "adversary": "participants"}),
        ("set", 0.5, {**tags, "adversary": "observer"})]
    assert spies["fedsim_test_auc"].calls == [("set", 0.75, tags)]
    assert spies["fedsim_round_duration_seconds"].calls == [("observe", 1.5, tags)]
    assert spies["fedsim_phase_seconds"].calls == [
        ("set", 1.0, {**tags, "phase": "train"}), ("set", 0.2, {**tags, "phase": "encrypt"})]


def test_plaintext_round_without_dp_skips_epsilon_ciphertexts_and_nan_auc(monkeypatch):
    spies = {name: _Spy() for name in telemetry.METRICS}
    monkeypatch.setattr(telemetry, "ray_active", lambda: True)
    monkeypatch.setattr(telemetry, "_make_metrics", lambda: spies)
    nan_auc = BinaryMetrics(**{**_record().metrics.as_dict(), "auc": float("nan")})
    telemetry.RunTelemetry("r2").record(_record(extra={}, dropped=(), metrics=nan_auc))
    assert spies["fedsim_epsilon"].calls == []
    assert spies["fedsim_ciphertexts"].calls == []
    assert spies["fedsim_dropouts"].calls == []
    assert spies["fedsim_test_auc"].calls == []


@pytest.mark.ray
@pytest.mark.slow
def test_records_reach_the_nodes_prometheus_endpoint(ray_session):
    t = telemetry.RunTelemetry("tele-ray", ciphertexts_per_update=1)
    assert t.enabled
    t.record(_record())
    t.record(_record(round=4))
    port = ray_session.nodes()[0]["MetricsExportPort"]
    values: dict[str, float] = {}
    deadline = time.monotonic() + 30  # the export runs every few seconds
    while time.monotonic() < deadline and len(values) < 3:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        for line in text.decode().splitlines():
            if 'run_id="tele-ray"' in line:
                values[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
        time.sleep(1.0)
    assert values.get("ray_fedsim_round") == 4.0
    assert values.get("ray_fedsim_rounds_completed_total") == 2.0
    assert values.get("ray_fedsim_ciphertexts_total") == 4.0  # 2 rounds x 2 clients x 1
