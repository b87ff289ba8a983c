"""Key holders that cannot be fooled: each attack of the security review, played by the
party that would mount it with what it holds, must now be refused."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from builders import federation, tiny_config

from fedsim.aggregate.steps import RoundContext
from fedsim.crypto import CKKSContext, raw
from fedsim.crypto.batch import decode_batch
from fedsim.crypto.identity import ChannelKey, SigningKey, digest, noise_statement, statement
from fedsim.errors import ConfigError, CryptoError, ProtocolError, Refusal
from fedsim.protocol.backend import Ready
from fedsim.protocol.keyholder import DecryptionRequest, KeyHolder
from fedsim.protocol.manifest import digest as manifest_digest
from fedsim.protocol.policy import HolderPolicy
from fedsim.protocol.schemes import Bundle, NoiseBatch

HE = {"mode": "he", "rounds": 3}


def he_fed(**crypto):
    return federation(tiny_config(federation=HE, crypto={"profile": "test",
                                                         "allow_insecure": True, **crypto}))


def round_inputs(fed, round_idx=0, commitment=None):
    """What the coordinator holds after one round's sum and its endorsements: manifest,
    aggregate, noise batch, bundles, endorsements. ``commitment``: what the coordinator
    tells the clients the noise commitment is (the aggregator's own by default)."""
    b = fed.backend
    context = RoundContext(round_idx, fed.pipeline.round_params(fed.step_states))
    commit_h, noise_h = b.call("aggregator", "begin", context, num_returns=2)
    told = b.defer(commit_h) if commitment is None else Ready(commitment)
    # A new model each round, as a server step would make (clients train from a model once).
    ref = b.put((fed.state.params + 1e-3 * round_idx).astype(fed.state.params.dtype))
    bundles = []
    groups = fed.population.groups(fed.names)
    for role, clients in groups.items():
        _, bundle_h = b.call(role, "train", round_idx, ref, clients, context, told,
                             num_returns=2)
        b.get(b.call("aggregator", "add_many", bundle_h))
        bundles.append(b.get(bundle_h))
    manifest_h, aggregate_h, _ = b.call("aggregator", "finish", num_returns=3)
    manifest = b.get(manifest_h)
    endorsements = fed._endorsements(round_idx, groups, manifest)
    return manifest, b.get(aggregate_h), b.get(noise_h), bundles, endorsements


def holders(fed):
    return [fed.backend.parties[f"keyholder:{i}"] for i in range(fed.cfg.crypto.key_holders)]


def refused(holder, request, noise, bundles, match):
    with pytest.raises(Refusal, match=match) as info:
        holder.partial_decrypt(request, noise, bundles)
    assert str(info.value).startswith(f"keyholder-{holder.index} refuses ")
    assert holder.refusals[-1] == str(info.value) and info.value.round == request.manifest.round
    return str(info.value)


def everyone(fed):
    return tuple(range(fed.cfg.crypto.key_holders))


def test_an_honest_round_is_decrypted_and_each_check_stops_its_attack():
    fed = he_fed()
    manifest, aggregate, noise, bundles, endorsed = round_inputs(fed)
    holder = holders(fed)[1]
    ask = DecryptionRequest(manifest, everyone(fed), lead=False, endorsements=endorsed)
    # A crafted aggregate (c0 = 0, c1 = 2^52 would make a share reveal the key exactly):
    # the holder decrypts only its own sum of the signed batches, never the one it is sent.
    crafted = _crafted_aggregate(fed, aggregate)
    refused(holder, replace(ask, manifest=replace(manifest, aggregate_digest=manifest_digest(
        crafted))), noise, bundles, "the aggregator's sum is not the sum of the signed batches")
    # Fake contributors: a made-up client, and one real client listed alone.
    fake = SigningKey()
    batch = bundles[0].payloads[0]
    forged = Bundle((("hospital-9",),), (batch,), (fake.sign(statement(
        "t", 0, "hospital-9", digest(batch), bundles[0].model, b"")),), bundles[0].model)
    refused(holder, replace(ask, manifest=replace(manifest, contributors=(
        "hospital-0", "hospital-9"))), noise, [*bundles, forged],
        "hospital-9 is not a registered client")
    refused(holder, replace(ask, manifest=replace(manifest, contributors=("hospital-0",))),
            noise, bundles, "1 contributor\\(s\\); at least 2 required")
    # A batch credited to another client: its signature is its own client's.
    swapped = replace(bundles[0], groups=(("hospital-1",),))
    refused(holder, ask, noise, [bundles[0], swapped, bundles[2]],
            "hospital-1's batch is not signed by hospital-1")
    refused(holder, replace(ask, manifest=replace(manifest, run_id="other")), noise, bundles,
            "an aggregate of run 'other', not 't'")
    refused(holder, replace(ask, manifest=replace(manifest, round=3)), noise, bundles,
            "round 3: the run has rounds 0..2")
    # n-of-n: every holder decrypts, or none (a share of a subset would be useless to an
    # honest coordinator and is a different Lagrange set to a dishonest one).
    for participants in [(0, 1), (0, 1, 1), (2, 1, 0), (0, 2, 3)]:
        refused(holder, replace(ask, participants=participants), noise, bundles,
                "decrypting with holders")
    # A contributor that did not endorse the set (the coordinator drops its endorsement).
    refused(holder, replace(ask, endorsements={**endorsed, "hospital-2": b""}), noise,
            bundles, "hospital-2 did not endorse this sum")
    # The honest request is accepted, once.
    share, checked_s = holder.partial_decrypt(ask, noise, bundles)
    assert share[:4] == b"FSCB" and checked_s > 0
    refused(holder, ask, noise, bundles, "round 0 again")
    # Replay: the same signed batches under a new round number.
    replay = replace(ask, manifest=replace(manifest, round=1))
    refused(holder, replay, noise, bundles, "not signed by hospital-\\d for this run, round")
    assert len(holder.refusals) == 13


def test_noise_chosen_after_the_batches_were_seen_is_refused():
    """An aggregator adding noise must commit to it before the clients sign: noise
    crafted from their ciphertexts (to cancel c1) does not match what they signed."""
    cfg = tiny_config(federation=HE, crypto={"profile": "test", "allow_insecure": True},
                      privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 1.0})
    fed = federation(cfg)
    manifest, aggregate, noise, bundles, endorsed = round_inputs(fed)
    assert isinstance(noise, NoiseBatch) and manifest.noise_added
    ask = DecryptionRequest(manifest, everyone(fed), lead=True, endorsements=endorsed)
    # Noise swapped after the clients signed, even with the aggregator's signature over it
    # (an aggregator that changes its mind): the clients signed another commitment.
    other = _crafted_aggregate(fed, noise.payload)
    signer = fed.backend.parties["aggregator"]._signing
    resigned = NoiseBatch(other, signer.sign(noise_statement("t", 0, digest(other))))
    refused(holders(fed)[0], ask, resigned, bundles,
            "not signed by hospital-\\d for this run, round, model and noise")
    refused(holders(fed)[0], ask, None, bundles, "no DP-noise batch where the run has")
    holders(fed)[0].partial_decrypt(ask, noise, bundles)  # the committed noise passes


def test_noise_the_coordinator_injects_or_replays_is_refused():
    """The coordinator tells the clients the commitment of a noise batch of its own
    (crafted, say, to make the decrypted sum reveal the key): the clients sign it, but
    the noise is not the aggregator's. Nor is the aggregator's noise of another round."""
    cfg = tiny_config(federation=HE, crypto={"profile": "test", "allow_insecure": True},
                      privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 1.0})
    fed = federation(cfg)
    _, _, honest, _, _ = round_inputs(fed)
    crafted = _crafted_aggregate(fed, honest.payload)
    manifest, _, _, bundles, endorsed = round_inputs(fed, 1, commitment=digest(crafted))
    ask = DecryptionRequest(manifest, everyone(fed), lead=True, endorsements=endorsed)
    coordinator = SigningKey()
    for noise in [NoiseBatch(crafted), NoiseBatch(crafted, coordinator.sign(
            noise_statement("t", 1, digest(crafted))))]:
        refused(holders(fed)[2], ask, noise, bundles,
                "round 1: a DP-noise batch not signed by the aggregator for this run and round")
    # The aggregator's own noise of round 0, its commitment told to the clients in round 2.
    manifest, _, _, bundles, endorsed = round_inputs(fed, 2, commitment=digest(honest.payload))
    refused(holders(fed)[2], replace(ask, manifest=manifest, endorsements=endorsed), honest,
            bundles, "round 2: a DP-noise batch not signed by the aggregator")
    # With distributed noise there is no aggregator batch: one offered is refused, even
    # one the aggregator signed (a malicious aggregator's crafted batch).
    cfg = tiny_config(federation=HE, crypto={"profile": "test", "allow_insecure": True},
                      privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 1.0,
                               "placement": "distributed"})
    fed = federation(cfg)
    manifest, _, none, bundles, endorsed = round_inputs(fed, commitment=digest(crafted))
    assert none is None and not manifest.noise_added
    signer = fed.backend.parties["aggregator"]._signing
    signed = NoiseBatch(crafted, signer.sign(noise_statement("t", 0, digest(crafted))))
    ask = DecryptionRequest(manifest, everyone(fed), lead=True, endorsements=endorsed)
    refused(holders(fed)[0], ask, signed, bundles,
            "round 0: a DP-noise batch where the run has none")


def test_t_of_n_never_decrypts_two_sums_of_one_round_even_with_a_colluding_holder():
    """2-of-3: holders {0, 1} decrypt the round's sum; the coordinator, with holder 1 on
    its side, then asks holder 2, who has decrypted nothing, for the sum of two of the
    round's three clients (the difference of the two sums is the third client's update).
    The clients endorsed one set each, and holder 2 requires their endorsements."""
    cfg = tiny_config(federation=HE, crypto={"profile": "test", "allow_insecure": True,
                                             "key_holders": 3, "threshold": 2})
    fed = federation(cfg)
    manifest, _, noise, bundles, endorsed = round_inputs(fed)
    kept = holders(fed)
    ask = DecryptionRequest(manifest, (0, 1), lead=True, endorsements=endorsed)
    kept[0].partial_decrypt(ask, noise, bundles)
    kept[1].partial_decrypt(replace(ask, lead=False), noise, bundles)
    two = replace(manifest, contributors=manifest.contributors[:2],
                  digests=manifest.digests[:2])
    two = replace(two, aggregate_digest=manifest_digest(_sum_of(fed, bundles[:2])))
    groups = fed.population.groups(fed.names)
    with pytest.raises(ProtocolError, match="client hospital-0 refuses to endorse round 0 as "
                                            "another sum"):
        fed._endorsements(0, groups, two)
    other = DecryptionRequest(two, (1, 2), lead=False, endorsements=endorsed)
    refused(kept[2], other, noise, bundles[:2], "hospital-0 did not endorse")
    # An honest holder that decrypted the round refuses another sum of it outright.
    refused(kept[1], replace(other, lead=True), noise, bundles[:2],
            "round 0 as another sum than the one it decrypted")
    # The same sum again, by the set that stands in for a lost holder, is accepted.
    kept[2].partial_decrypt(replace(ask, participants=(0, 2), lead=False), noise, bundles)


def test_parties_answer_only_their_public_methods():
    fed = he_fed()
    for method in ["_refuse", "__ray_call__", "__reduce__", ""]:
        with pytest.raises(ProtocolError, match="is not a public method of the party"):
            fed.backend.call("keyholder:0", method, "x")
    with pytest.raises(Refusal, match="a second roster"):
        fed.backend.get(fed.backend.call("keyholder:0", "register", {}, {}, b""))
    with pytest.raises(Refusal, match="a second joint public key"):
        fed.backend.get(fed.backend.call("keyholder:0", "use_public_key", b"key"))


def _sum_of(fed, bundles) -> bytes:
    """What the aggregator would return for these bundles alone."""
    total = fed.backend.parties["aggregator"]._summation.start()
    for bundle in bundles:
        for (client,), batch in zip(bundle.groups, bundle.payloads):
            total.add(batch, client)
    return total.result()


def _crafted_aggregate(fed, like: bytes) -> bytes:
    """A batch shaped like ``like`` whose c0 is 0 and c1 the constant 2^52."""
    from fedsim.crypto.batch import decode_batch

    items = decode_batch(like)
    layout = raw.learn(items[0])
    res = raw.read_items(layout, items)
    res[:, 0, :] = 0
    for j, q in enumerate(layout.moduli):
        if j >= len(layout.moduli) // 2:
            res[:, j, :] = np.uint64((1 << 52) % q)
    return raw.write_batch(layout, res)


def test_a_context_outside_the_holders_policy_is_refused():
    cfg = tiny_config(federation=HE, crypto={"profile": "test", "allow_insecure": True})
    policy = HolderPolicy.from_config(cfg, run_id="t", num_values=4401, noise_batches=0,
                                      max_contributors=cfg.federation.clients_per_round)
    honest = CKKSContext.create("test", allow_insecure=True, max_contributors=3,
                                max_key_holders=3, max_decryptions=policy.budget(
                                    CKKSContext.create("test", allow_insecure=True)))
    KeyHolder(policy, honest.to_bytes(), index=0)  # accepted
    # A coordinator-chosen noise estimate: flooding with a tiny sigma.
    from fedsim.crypto import context as ctx_module

    meta = replace(honest._meta, measured_noise=-40.0)
    cc = ctx_module._generate(ctx_module._params(meta, ctx_module.fhe.EXEC_EVALUATION))
    forged = ctx_module.CKKSContext(meta, cc, ctx_module.fhe.Serialize(cc, ctx_module.fhe.BINARY))
    assert forged.share_noise_sigma < 2.0**-10
    with pytest.raises(Refusal, match="noise estimate .* is below this holder's own"):
        KeyHolder(policy, forged.to_bytes(), index=0)
    # The insecure ring when the holder's own config does not allow it.
    strict = replace(policy, allow_insecure=False)
    with pytest.raises(Refusal, match="insecure profile 'test' and crypto.allow_insecure"):
        KeyHolder(strict, honest.to_bytes(), index=0)
    # Another profile than the run's; flooding sized for too few decryptions.
    with pytest.raises(Refusal, match="profile 'test', but the run configured 'secure'"):
        KeyHolder(replace(policy, profile="secure"), honest.to_bytes(), index=0)
    with pytest.raises(Refusal, match="floods for .* decryptions, the run needs"):
        KeyHolder(replace(policy, rounds=10**6), honest.to_bytes(), index=0)
    # fast: refused unless the run accepted unflooded decryption explicitly.
    with pytest.raises(ConfigError, match="'fast' does not flood decryption shares"):
        tiny_config(federation=HE, crypto={"profile": "fast"})
    fast = CKKSContext.create("fast", max_contributors=3, max_key_holders=3)
    with pytest.raises(Refusal, match="set crypto.accept_unflooded_decryption"):
        KeyHolder(replace(policy, profile="fast"), fast.to_bytes(), index=0)


def test_the_decryption_budget_tau_is_counted_and_enforced():
    fed = he_fed()
    for h in holders(fed):  # a budget of one round, as a holder's own config could say
        h._budget = h.policy.ciphertexts_per_round(h._context)
    fed.run_round(0)
    with pytest.raises(Refusal, match="would pass this holder's decryption budget tau = "
                                      "\\d+ \\(used \\d+\\)"):
        fed.run_round(1)


def test_the_coordinator_relays_only_sealed_shares_and_cannot_open_them():
    from test_protocol_he import RecordingBackend

    cfg = tiny_config(federation=HE, crypto={"profile": "test", "allow_insecure": True,
                                             "threshold": 2})
    backend = RecordingBackend()
    fed = federation(cfg, backend)
    fed.run_round(0)
    kept = holders(fed)
    probes = []
    for h in kept:
        probes += [h._share._secret_probe(), h._share._secret_probe(text=True)]
        for share in h._share._held.values():  # every Shamir share it holds, and their sum
            probes.append(share.towers[0][100:108].astype("<u8").tobytes())
        probes.append(h._share._combined()[0][100:108].astype("<u8").tobytes())
    crossed = b"".join(backend.crossed)
    assert len(probes) == 3 * (2 + 3 + 1) and len(crossed) > 10_000
    assert not [p for p in probes if p in crossed]
    # What the coordinator relayed is sealed: no key of its own opens it.
    sealed = kept[0].sealed_shares()
    attacker = ChannelKey()
    with pytest.raises(CryptoError, match="does not authenticate"):
        attacker.open_from(kept[0].card().channel, sealed[1], run_id=fed.run_id,
                           sender="keyholder-0", receiver="keyholder-1")
    with pytest.raises(TypeError):
        pickle.dumps(kept[0])


def test_t_of_n_decrypts_with_threshold_holders_and_survives_a_lost_one():
    cfg = tiny_config(federation=HE, crypto={"profile": "test", "allow_insecure": True,
                                             "key_holders": 3, "threshold": 2})
    reference = he_fed()
    fed = federation(cfg)
    for r in range(2):
        reference.run_round(r)
    fed.run_round(0)
    assert all(len(h._attempts) == (1 if h.index < 2 else 0) for h in holders(fed))
    fed.backend.stop("keyholder:0")  # lost between rounds: holders 1 and 2 decrypt
    fed.run_round(1)
    assert fed.scheme.missing == {0}
    assert np.max(np.abs(fed.state.params - reference.state.params)) <= 1e-4
    fed.backend.stop("keyholder:2")
    with pytest.raises(ProtocolError, match="only 1 key holder\\(s\\) left, threshold is 2"):
        fed.run_round(2)


def test_an_unflooded_run_warns_every_time_and_says_so_in_its_manifest(tmp_path):
    from rich.console import Console

    from fedsim import load_run
    from fedsim.run.runner import run_federated

    cfg = tiny_config(federation={"mode": "he", "rounds": 1},
                      crypto={"profile": "fast", "accept_unflooded_decryption": True})
    console = Console(record=True, width=200)
    run_federated(cfg, out_dir=tmp_path / "run", backend="inprocess", reference=False,
                  console=console)
    said = console.export_text()
    assert said.count("does not flood decryption shares") == 2  # at the start and the end
    assert "not provably secure" in said
    (caveat,) = load_run(tmp_path / "run").manifest["caveats"]
    assert caveat.startswith("crypto.profile 'fast' does not flood decryption shares")
    plain = tiny_config(federation={"rounds": 1})
    run_federated(plain, out_dir=tmp_path / "plain", backend="inprocess", reference=False,
                  console=Console(record=True))
    assert load_run(tmp_path / "plain").manifest["caveats"] == []


def test_clients_and_the_aggregator_take_the_encoding_once_and_of_the_runs_mode():
    """The coordinator, after set-up, hands a client a plaintext encoding (or a sealed
    one under a key of its own) to read its next update: refused, as is a second
    encoding to the aggregator. A client of an he run encodes nothing before set-up."""
    from fedsim.protocol.schemes.plaintext import PlainEncoding
    from fedsim.protocol.schemes.threshold import SealedEncoding

    fed = he_fed()
    b = fed.backend
    own_key = SealedEncoding(fed.scheme.context.to_bytes(), b"a key the coordinator holds",
                             1.0, fed.scheme.scale)
    for role in [fed.population.roles[fed.names[0]], "aggregator"]:
        for encoding in [PlainEncoding(), own_key]:
            with pytest.raises(ProtocolError, match="a second encoding refused"):
                b.get(b.call(role, "use_encoding", encoding))
    from fedsim.protocol.client import Contributions

    fresh = Contributions(fed.pipeline, 0, "t", ["c"], mode="he")
    with pytest.raises(ProtocolError, match="a plaintext encoding refused in a he run"):
        fresh.use_encoding(PlainEncoding())
    with pytest.raises(ProtocolError, match="refuses to train before the run's he encoding"):
        fresh.check_round(0, ["c"], b"")


def test_a_client_signs_one_batch_per_round_and_rounds_only_move_forward():
    """Retrain: the coordinator asks the clients for a second batch of round 0 and would
    decrypt the difference of two sums; rollback: a round older than one they signed."""
    fed = he_fed()
    manifest, _, noise, bundles, endorsed = round_inputs(fed)
    b = fed.backend
    context = RoundContext(0, fed.pipeline.round_params(fed.step_states))
    role = fed.population.roles[fed.names[0]]
    for round_idx in [0, 1, 0]:
        if round_idx == 1:
            round_inputs(fed, 1)
            continue
        _, bundle_h = b.call(role, "train", round_idx, b.put(fed.state.params),
                             [fed.names[0]], context, Ready(b""), num_returns=2)
        with pytest.raises(ProtocolError, match=f"refuses to train round {round_idx}: it "
                                                "signed a batch for round"):
            b.get(bundle_h)
    with pytest.raises(ProtocolError, match="round 0 begun after round 1"):
        b.get(b.call("aggregator", "begin", context))
    # A frozen model: round 2 from the model of round 0 (the difference of the two sums,
    # one client left out, would be that client's update exactly).
    _, bundle_h = b.call(role, "train", 2, b.put(fed.state.params), [fed.names[0]], context,
                         Ready(b""), num_returns=2)
    with pytest.raises(ProtocolError, match="refuses to train round 2 from a model and round "
                                            "parameters it trained from before"):
        b.get(bundle_h)
    cohort = federation(tiny_config(federation={**HE, "clients": "cohort"},
                                    crypto={"profile": "test", "allow_insecure": True}))
    (role, clients), = cohort.population.groups(cohort.names).items()
    _, bundle_h = cohort.backend.call(role, "train", 0, cohort.backend.put(
        cohort.state.params), [clients[0], *clients], context, Ready(b""), num_returns=2)
    with pytest.raises(ProtocolError, match="a client listed twice"):
        cohort.backend.get(bundle_h)


def test_a_client_endorses_only_its_own_batch_in_the_sum():
    fed = he_fed()
    manifest, _, _, bundles, _ = round_inputs(fed)
    groups = fed.population.groups(fed.names)
    other = bundles[1].payloads[0]
    swapped = replace(manifest, digests=(manifest_digest(other), *manifest.digests[1:]))
    with pytest.raises(ProtocolError, match="client hospital-0 refuses to endorse round 0: "
                                            "the sum lists another batch as its own"):
        fed._endorsements(0, groups, swapped)
    # The refused request changed nothing: the honest sum is still endorsed, and only it.
    assert fed._endorsements(0, groups, manifest).keys() == set(fed.names)


def test_a_client_trained_from_its_own_model_or_round_parameters_is_refused():
    """The coordinator sends one client other parameters (a model of its own, or other
    round parameters) to tell its update apart in the sum: each batch is signed with
    the digest of what it trained from, and the holders require one for all."""
    fed = he_fed()
    b = fed.backend
    context = RoundContext(0, fed.pipeline.round_params(fed.step_states))
    commit_h, noise_h = b.call("aggregator", "begin", context, num_returns=2)
    bundles = []
    for i, (role, clients) in enumerate(fed.population.groups(fed.names).items()):
        params = fed.state.params * (0.5 if i == 2 else 1.0)
        _, bundle_h = b.call(role, "train", 0, b.put(params), clients, context,
                             b.defer(commit_h), num_returns=2)
        b.get(b.call("aggregator", "add_many", bundle_h))
        bundles.append(b.get(bundle_h))
    manifest_h, _, _ = b.call("aggregator", "finish", num_returns=3)
    manifest = b.get(manifest_h)
    endorsed = fed._endorsements(0, fed.population.groups(fed.names), manifest)
    ask = DecryptionRequest(manifest, everyone(fed), lead=True, endorsements=endorsed)
    refused(holders(fed)[0], ask, b.get(noise_h), bundles,
            "round 0: its batches were trained from 2 different models or round parameters")
    # Claiming the others' model digest for the odd batch breaks its signature instead.
    relabelled = [*bundles[:2], replace(bundles[2], model=bundles[0].model)]
    refused(holders(fed)[0], ask, b.get(noise_h), relabelled,
            "hospital-2's batch is not signed by hospital-2 for this run, round, model")


def test_holders_refuse_malformed_sets_older_rounds_and_sets_without_them():
    cfg = tiny_config(federation={**HE, "clients_per_round": 2, "min_clients": 2},
                      crypto={"profile": "test", "allow_insecure": True,
                              "key_holders": 3, "threshold": 2})
    fed = federation(cfg)
    manifest, _, noise, bundles, endorsed = round_inputs(fed)  # all three clients trained
    holder = holders(fed)[1]
    ask = DecryptionRequest(manifest, (0, 1), lead=False, endorsements=endorsed)
    refused(holder, ask, noise, bundles, "3 contributors, more than the run's 2 per round")
    twice = replace(manifest, contributors=("hospital-0", "hospital-0"),
                    digests=manifest.digests[:1] * 2)
    refused(holder, replace(ask, manifest=twice), noise, bundles,
            "the manifest lists a contributor twice")
    refused(holder, replace(ask, participants=(0, 2)), noise, bundles, "decrypting with "
            "holders \\(0, 2\\): not 2 distinct holders of 0..2 in order, this one among them")
    # Rounds move forward: after round 1, round 0 is refused.
    fed = federation(tiny_config(federation=HE, crypto={"profile": "test",
                                                        "allow_insecure": True}))
    first = round_inputs(fed, 0)
    second = round_inputs(fed, 1)
    holder = holders(fed)[0]
    for (manifest, _, noise, bundles, endorsed), outcome in [(second, None), (first, "older")]:
        ask = DecryptionRequest(manifest, everyone(fed), lead=True, endorsements=endorsed)
        if outcome is None:
            holder.partial_decrypt(ask, noise, bundles)
        else:
            refused(holder, ask, noise, bundles, "round 0: older than round 1")


def _out_of_band(obj):
    """``obj`` through pickle protocol 5 with out-of-band buffers, as Ray moves it."""
    buffers = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=[memoryview(b.raw()).toreadonly() for b in buffers])


def test_batches_moved_out_of_band_are_checked_as_bytes_are_and_a_flipped_byte_is_refused():
    """Ray hands a holder each batch as a read-only view of the object store (no copy);
    the holder re-adds it to the very sum it gets from bytes. It skips the CRCs of a
    signed batch, so a corrupted byte must be caught by the signature instead."""
    fed = he_fed()
    manifest, aggregate, noise, bundles, endorsed = round_inputs(fed)
    holder = holders(fed)[0]
    ask = DecryptionRequest(manifest, everyone(fed), lead=True, endorsements=endorsed)
    moved = [_out_of_band(b) for b in bundles]
    assert all(isinstance(p, np.ndarray) and not p.flags.writeable
               for b in moved for p in b.payloads)
    assert pickle.loads(pickle.dumps(bundles[0], protocol=4)).payloads == bundles[0].payloads
    total, count = holder.check(ask, noise, moved)
    assert total.result() == holder.check(ask, noise, bundles)[0].result() == aggregate
    assert count == total.num_ciphertexts and b"".join(map(bytes, total.items())) == \
        b"".join(decode_batch(aggregate))
    flipped = bytearray(bundles[1].payloads[0])
    flipped[len(flipped) // 2] ^= 0x01  # its CRC left stale: only the signature can tell
    corrupted = _out_of_band(replace(bundles[1], payloads=(bytes(flipped),)))
    refused(holder, ask, noise, [moved[0], corrupted, moved[2]],
            "hospital-1's batch is not signed by hospital-1")
