"""Encrypted rounds: equality with plaintext, key-holder policy, t-of-n, bad bytes, secrecy."""

from __future__ import annotations

import pickle
from dataclasses import replace as dc_replace
from pathlib import Path

import numpy as np
import pytest
from builders import federation, scored_rounds, tiny_config, train_one

from fedsim.errors import ProtocolError
from fedsim.protocol.backend import InProcessBackend
from fedsim.protocol.manifest import Manifest, digest
from fedsim.run.runner import run_federated


def he_config(**federation):
    return tiny_config(federation={"mode": "he", **federation})


def test_he_rounds_match_plaintext_rounds():
    plain = federation(tiny_config())
    enc = federation(he_config())
    a = scored_rounds(plain, 3)
    b = scored_rounds(enc, 3)
    diff = np.max(np.abs(plain.state.params - enc.state.params))
    assert diff <= 1e-4, diff
    assert np.allclose([r.metrics.auc for r in a], [r.metrics.auc for r in b], atol=1e-3)
    assert all(r.phases["encrypt"] > 0 and r.phases["partial_decrypt"] > 0 for r in b)
    ct_bytes = b[0].extra["bytes_up_per_client"]
    assert ct_bytes > 8 * enc.num_params  # ciphertexts are larger than float64 updates
    assert b[0].extra["bytes_aggregate"] == ct_bytes


def test_a_refused_round_fails_the_run_with_one_line_and_is_recorded(tmp_path, monkeypatch):
    """A malicious aggregator returns a sum of its own: every key holder refuses it."""
    from fedsim import load_run
    from fedsim.errors import Refusal
    from fedsim.protocol.aggregator import Aggregator

    honest = Aggregator.finish

    def lying(self):
        manifest, aggregate, seconds = honest(self)
        forged = aggregate[:-1] + bytes([aggregate[-1] ^ 1])
        return dc_replace(manifest, aggregate_digest=digest(forged)), forged, seconds

    monkeypatch.setattr(Aggregator, "finish", lying)
    with pytest.raises(Refusal, match="refuses round 0: the aggregator's sum is not the sum"):
        run_federated(he_config(), out_dir=tmp_path / "run", backend="inprocess",
                      reference=False)
    run = load_run(tmp_path / "run")
    assert run.manifest["status"] == "failed" and run.rounds.num_rows == 0
    assert run.manifest["refused"] == {"round": 0, "by": "keyholder-0",
                                       "reason": run.manifest["error"]}
    assert run.manifest["error"].startswith("keyholder-0 refuses round 0: ")


def test_n_of_n_cannot_decrypt_without_every_holder():
    fed = federation(he_config())
    fed.backend.stop("keyholder:1")
    with pytest.raises(ProtocolError, match="keyholder-1 is gone and decryption is n-of-n"):
        fed.run_round(0)


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_bad_ciphertext_bytes_drop_the_client_that_sent_them(damage):
    fed = federation(he_config())
    other = federation(he_config(), run_id="other")  # same context profile, other keys
    victim = fed.names[0]
    client = fed.backend.parties[f"client:{victim}"]
    honest = client.train

    def broken(round_idx, flat, clients, context, commitment):
        reports, bundle = honest(round_idx, flat, clients, context, commitment)
        (blob,) = bundle.payloads
        if damage == "truncate":
            blob = blob[: len(blob) // 2]
        elif damage == "flip":
            blob = bytearray(blob)
            blob[len(blob) // 2] ^= 0xFF
            blob = bytes(blob)
        else:
            _, blob = train_one(other, victim, round_idx, flat)
        return reports, dc_replace(bundle, payloads=(blob,))

    client.train = broken
    record = fed.run_round(0)
    assert record.dropped == (victim,)
    assert any(victim in w for w in fed.warnings)


def test_a_round_with_too_few_valid_updates_fails_cleanly(tmp_path, monkeypatch):
    from fedsim.errors import CryptoError
    from fedsim.protocol.client import Hospital

    cfg = he_config(rounds=3, clients_per_round=3, min_clients=3)
    honest = Hospital.train

    def flaky(self, round_idx, flat, clients, context, commitment):
        if round_idx == 1 and self.name == "hospital-0":
            raise CryptoError("client hospital-0: simulated encryption failure")
        return honest(self, round_idx, flat, clients, context, commitment)

    monkeypatch.setattr(Hospital, "train", flaky)
    with pytest.raises(ProtocolError, match="round 1: only 2 valid update"):
        run_federated(cfg, out_dir=tmp_path / "run", backend="inprocess", reference=False)
    from fedsim import load_run

    run = load_run(tmp_path / "run")
    assert run.rounds.num_rows == 1 and run.manifest["status"] == "failed"
    assert "round 1: only 2 valid update" in run.manifest["error"]
    assert run.params is None
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


class RecordingBackend(InProcessBackend):
    """In-process backend that pickles everything crossing a party boundary."""

    def __init__(self):
        super().__init__()
        self.crossed: list[bytes] = []

    def _record(self, value):
        try:
            self.crossed.append(pickle.dumps(value))
        except Exception:  # noqa: BLE001 - unpicklable values could not cross Ray either
            self.crossed.append(repr(value).encode())

    def put(self, value):
        self._record(value)
        return super().put(value)

    def call(self, role, method, *args, num_returns=1, **kwargs):
        self._record((args, kwargs))
        out = super().call(role, method, *args, num_returns=num_returns, **kwargs)
        for h in (out if isinstance(out, tuple) else (out,)):
            if h.error is None:
                self._record(h.value)
        return out


def test_secret_shares_never_leave_their_holders(tmp_path, monkeypatch):
    cfg = tiny_config(federation={"mode": "he", "rounds": 2},
                      crypto={"profile": "test", "allow_insecure": True, "threshold": 2})
    backend = RecordingBackend()
    kept = {}
    original_shutdown = backend.shutdown

    def keep_then_shutdown():
        kept.update(backend.parties)
        original_shutdown()

    backend.shutdown = keep_then_shutdown
    monkeypatch.setattr("fedsim.protocol.backend.InProcessBackend", lambda: backend)
    run_federated(cfg, out_dir=tmp_path / "run", backend="inprocess", reference=False)
    holders = [kept[f"keyholder:{i}"] for i in range(3)]
    probes = [h._share._secret_probe() for h in holders]
    assert all(len(p) == 64 for p in probes)
    texts = [h._share._secret_probe(text=True) for h in holders]
    assert all(len(t) >= 12 for t in texts)  # decimal digits of one 60-bit residue
    probes += texts
    written = b"".join(p.read_bytes() for p in Path(tmp_path / "run").rglob("*") if p.is_file())
    crossed = b"".join(backend.crossed)
    assert len(backend.crossed) > 20 and len(written) > 1000
    for probe in probes:
        assert probe not in written
        assert probe not in crossed
    with pytest.raises(TypeError):
        pickle.dumps(holders[0])


@pytest.mark.ray
def test_three_encrypted_rounds_on_ray(ray_session):
    from actors import RayBackend

    cfg = he_config()
    fed = federation(cfg, RayBackend("he-ray"), run_id="he-ray")
    try:
        records = scored_rounds(fed, 3)
        listed = {a["name"] for a in ray_session.util.list_named_actors(all_namespaces=True)}
        assert {f"he-ray/keyholder-{i}" for i in range(3)} <= listed
        with pytest.raises(ProtocolError, match="'__ray_call__' is not a public method"):
            fed.backend.call("keyholder:0", "__ray_call__", lambda holder: holder._share)
    finally:
        fed.backend.shutdown()
    local = federation(he_config())
    expected = scored_rounds(local, 3)
    np.testing.assert_allclose(fed.state.params, local.state.params, atol=1e-4)
    assert [r.clients for r in records] == [r.clients for r in expected]
    assert all(r.phases["partial_decrypt"] > 0 for r in records)


def test_manifest_count():
    m = Manifest("r", 0, ("a", "b"), ("x", "y"), "z")
    assert m.count == 2
