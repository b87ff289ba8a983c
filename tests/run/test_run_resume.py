"""Checkpoint and resume: a run stopped at any round continues to the same model.

Faults are injected where they hurt: the round loop interrupted (as SIGINT/SIGTERM do),
the driver killed with SIGKILL mid-run, and a run stopped after a round's sum was
decrypted but before its checkpoint (under DP that release is charged, not repeated).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from builders import tiny_config

from fedsim.cli import main
from fedsim.errors import Interrupted
from fedsim.protocol.federation import Federation
from fedsim.run import checkpoint
from fedsim.run.results import load_run
from fedsim.run.runner import resume_run, run_federated

ROUNDS = 4


def _flat(params: dict) -> np.ndarray:
    from fedsim.run.results import flatten_params

    return np.concatenate([v.ravel() for _, v in sorted(flatten_params(params).items())])


def _interrupt_at(monkeypatch, round_idx: int) -> None:
    """Round ``round_idx`` raises KeyboardInterrupt as it starts (what SIGINT does)."""
    honest = Federation.run_round

    def run_round(self, r):
        if r == round_idx:
            raise KeyboardInterrupt
        return honest(self, r)

    monkeypatch.setattr(Federation, "run_round", run_round)


def _run(cfg, out, **kw):
    return run_federated(cfg, out_dir=out, backend="inprocess", reference=False, **kw)


def _config(**sections):
    sections.setdefault("federation", {})
    sections["federation"] = {"rounds": ROUNDS, "server_optimizer": {"name": "fedadam"},
                              **sections["federation"]}
    return tiny_config(**sections)


def test_an_interrupted_plaintext_run_resumes_to_the_bit_identical_model(tmp_path, monkeypatch):
    cfg = _config()
    whole = _run(cfg, tmp_path / "whole")
    with monkeypatch.context() as m:
        _interrupt_at(m, 2)
        with pytest.raises(Interrupted, match=r"interrupted after 2 round\(s\); continue with: "
                                              r"fedsim resume "):
            _run(cfg, tmp_path / "cut")
    stopped = load_run(tmp_path / "cut")
    assert stopped.manifest["status"] == "interrupted"
    assert stopped.manifest["resume"] == f"fedsim resume {tmp_path / 'cut'}"
    assert stopped.rounds.num_rows == 2 and stopped.params is None
    resume_run(tmp_path / "cut", backend="inprocess", reference=False)
    done, ref = load_run(tmp_path / "cut"), load_run(tmp_path / "whole")
    assert done.manifest["status"] == "completed"
    assert done.manifest["resumed"][0]["from_round"] == 2
    assert np.array_equal(_flat(done.params), _flat(ref.params))  # server Adam state too
    assert done.rounds.column("round").to_pylist() == list(range(ROUNDS))
    assert done.rounds.column("loss").to_pylist() == ref.rounds.column("loss").to_pylist()
    assert done.metrics["pooled"]["auc"] == whole.report["pooled"]["auc"]


def test_rows_written_after_the_checkpoint_are_run_again_not_duplicated(tmp_path, monkeypatch):
    cfg = _config()
    with monkeypatch.context() as m:
        honest = checkpoint.save
        m.setattr(checkpoint, "save", lambda d, f, n, *s: (_ for _ in ()).throw(
            KeyboardInterrupt) if n == 3 else honest(d, f, n, *s))  # after round 2's row
        with pytest.raises(Interrupted):
            _run(cfg, tmp_path / "cut")
    assert load_run(tmp_path / "cut").rounds.num_rows == 3
    assert checkpoint.load(tmp_path / "cut").next_round == 2
    resume_run(tmp_path / "cut", backend="inprocess", reference=False)
    ref = _run(cfg, tmp_path / "whole")
    done = load_run(tmp_path / "cut")
    assert done.rounds.column("round").to_pylist() == list(range(ROUNDS))
    assert np.array_equal(_flat(done.params), _flat(load_run(ref.out_dir).params))


def test_an_he_run_resumes_with_new_keys_to_the_same_model(tmp_path, monkeypatch):
    cfg = _config(federation={"mode": "he"},
                  crypto={"profile": "fast", "accept_unflooded_decryption": True})
    _run(cfg, tmp_path / "whole")
    with monkeypatch.context() as m:
        _interrupt_at(m, 1)
        with pytest.raises(Interrupted):
            _run(cfg, tmp_path / "cut")
    with np.load(tmp_path / "cut" / "checkpoint.npz") as npz:  # no key material
        assert {f.split("/")[0] for f in npz.files} == {"meta", "opt_0", "opt_1", "opt_2",
                                                       "params", "last"}  # last: round 0's
    resume_run(tmp_path / "cut", backend="inprocess", reference=False)
    diff = np.max(np.abs(_flat(load_run(tmp_path / "cut").params)
                         - _flat(load_run(tmp_path / "whole").params)))
    assert diff <= 1e-5, diff


def test_an_he_run_stopped_after_its_last_checkpoint_finishes_on_resume(tmp_path,
                                                                       monkeypatch):
    """Every round is done and checkpointed, the results are not written: the resume
    runs no round, reports and deploys the last evaluated model from the checkpoint,
    and says that the new key holders cannot attest it (no receipt), instead of
    failing for want of an evaluation."""
    from fedsim.run.results import RunWriter

    cfg = _config(federation={"mode": "he", "rounds": 2},
                  crypto={"profile": "fast", "accept_unflooded_decryption": True})
    with monkeypatch.context() as m:
        m.setattr(RunWriter, "params", lambda self, tree: (_ for _ in ()).throw(
            KeyboardInterrupt))
        with pytest.raises(Interrupted):
            _run(cfg, tmp_path / "cut")
    saved = checkpoint.load(tmp_path / "cut")
    assert saved.next_round == 2 and saved.last.round == 1
    resume_run(tmp_path / "cut", backend="inprocess", reference=False)
    done = load_run(tmp_path / "cut")
    assert done.manifest["status"] == "completed"
    assert np.array_equal(_flat(done.params), _flat(saved.last.params))
    assert done.metrics["pooled"]["auc"] == saved.last.report["pooled"]["auc"]
    assert "deployment" not in done.metrics
    assert "no deployment receipt" in done.metrics["selection"]["note"]


def test_an_evaluation_released_before_a_fault_is_charged_again_when_rerun(tmp_path,
                                                                          monkeypatch):
    """Round 1 is evaluated with noised histograms, then the run dies before its
    checkpoint: the resume runs and evaluates round 1 again (fresh secret noise), and
    the evaluation epsilon composes three releases, not two."""
    import dp_accounting

    cfg = _config(federation={"mode": "he", "rounds": 2},
                  crypto={"profile": "fast", "accept_unflooded_decryption": True},
                  evaluation={"noise_stddev": 4.0})
    with monkeypatch.context() as m:
        honest = checkpoint.save
        m.setattr(checkpoint, "save", lambda d, f, n, *s: (_ for _ in ()).throw(
            KeyboardInterrupt) if n == 2 else honest(d, f, n, *s))
        with pytest.raises(Interrupted):
            _run(cfg, tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "evaluations.json").read_text()) == {"released": 2}
    resume_run(tmp_path / "cut", backend="inprocess", reference=False)
    assert json.loads((tmp_path / "cut" / "evaluations.json").read_text()) == {"released": 3}
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(4.0), 3)
    dp = load_run(tmp_path / "cut").metrics["pooled"]["dp"]
    assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(cfg.privacy.delta))


def _dp_config():
    # Every hospital every round: participation, hence the ledger, is the same in
    # every run although the DP noise is secret.
    return _config(privacy={"enabled": True, "level": "client", "clip": 0.05,
                            "noise_multiplier": 2.0})


def test_a_dp_run_resumes_with_the_same_spent_epsilon(tmp_path, monkeypatch):
    cfg = _dp_config()
    whole = _run(cfg, tmp_path / "whole")
    with monkeypatch.context() as m:
        _interrupt_at(m, 2)
        with pytest.raises(Interrupted):
            _run(cfg, tmp_path / "cut")
    resume_run(tmp_path / "cut", backend="inprocess", reference=False)
    done = load_run(tmp_path / "cut")
    ref = load_run(whole.out_dir)
    for column in ("epsilon", "epsilon_participants", "epsilon_observer"):
        assert done.rounds.column(column).to_pylist() == ref.rounds.column(column).to_pylist()
    assert not any(done.rounds.column("lost_release").to_pylist()) \
        if "lost_release" in done.rounds.column_names else True


def test_a_dp_round_decrypted_before_the_fault_is_charged_not_released_again(
        tmp_path, monkeypatch):
    cfg = _dp_config()
    whole = _run(cfg, tmp_path / "whole")
    with monkeypatch.context() as m:
        honest = checkpoint.record_opening

        def opening(d, r, who):
            honest(d, r, who)
            if r == 2:  # the key holders are asked to decrypt round 2, then the run dies
                raise KeyboardInterrupt

        m.setattr(checkpoint, "record_opening", opening)
        with pytest.raises(Interrupted):
            _run(cfg, tmp_path / "cut")
    resume_run(tmp_path / "cut", backend="inprocess", reference=False)
    done = load_run(tmp_path / "cut")
    rows = done.rounds.to_pylist()
    assert [r["round"] for r in rows] == list(range(ROUNDS))
    assert rows[2]["lost_release"] == 1.0 and rows[2]["skipped"] == 1.0
    assert rows[2]["clients"] == ""
    # Round 2 was spent although its result never reached the model: the ledger after
    # the last round is the uninterrupted run's (every hospital took part 4 times).
    ref = load_run(whole.out_dir).rounds.to_pylist()
    assert rows[-1]["epsilon_participants"] == ref[-1]["epsilon_participants"]
    assert rows[2]["epsilon_participants"] == ref[2]["epsilon_participants"]


def test_a_dp_release_in_round_0_before_any_round_completed_is_charged(tmp_path,
                                                                        monkeypatch):
    cfg = _dp_config()
    with monkeypatch.context() as m:
        honest = checkpoint.record_opening

        def opening(d, r, who):
            honest(d, r, who)
            raise KeyboardInterrupt  # the first release of the run, then the run dies

        m.setattr(checkpoint, "record_opening", opening)
        with pytest.raises(Interrupted, match=r"interrupted after 0 round\(s\); continue"):
            _run(cfg, tmp_path / "cut")
    resume_run(tmp_path / "cut", backend="inprocess", reference=False)
    rows = load_run(tmp_path / "cut").rounds.to_pylist()
    assert rows[0]["lost_release"] == 1.0 and rows[0]["epsilon_participants"] > 0
    assert [r["round"] for r in rows] == list(range(ROUNDS))


def test_a_plaintext_round_decrypted_before_the_fault_is_simply_run_again(
        tmp_path, monkeypatch):
    cfg = _config()
    with monkeypatch.context() as m:
        honest = checkpoint.record_opening

        def opening(d, r, who):
            honest(d, r, who)
            if r == 1:
                raise KeyboardInterrupt

        m.setattr(checkpoint, "record_opening", opening)
        with pytest.raises(Interrupted):
            _run(cfg, tmp_path / "cut")
    resume_run(tmp_path / "cut", backend="inprocess", reference=False)
    ref = _run(cfg, tmp_path / "whole")
    assert np.array_equal(_flat(load_run(tmp_path / "cut").params),
                          _flat(load_run(ref.out_dir).params))


# ----------------------------------------------------------------- the command line
def _write_config(tmp_path, cfg) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return str(path)


def test_a_driver_killed_mid_run_resumes_from_the_command_line(tmp_path):
    cfg = _config(federation={"rounds": 6})
    config = _write_config(tmp_path, cfg)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "run", config, "--backend", "inprocess",
         "--out", str(out), "--no-reference"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not _checkpointed(out, 2) and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    assert main(["resume", str(out), "--backend", "inprocess", "--no-reference"]) == 0
    assert main(["run", config, "--backend", "inprocess", "--out", str(tmp_path / "whole"),
                 "--no-reference"]) == 0
    done, ref = load_run(out), load_run(tmp_path / "whole")
    assert done.manifest["status"] == "completed"
    assert done.rounds.column("round").to_pylist() == list(range(6))
    assert np.array_equal(_flat(done.params), _flat(ref.params))


def _checkpointed(out, rounds: int) -> bool:
    try:
        return checkpoint.load(out).next_round >= rounds
    except Exception:  # not there yet
        return False


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.parametrize("sig, backend", [(signal.SIGTERM, "ray"),
                                          (signal.SIGINT, "inprocess")])
def test_a_signal_mid_run_stops_cleanly_and_the_run_resumes(tmp_path, sig, backend):
    cfg = _config(federation={"rounds": 40})
    config = _write_config(tmp_path, cfg)
    out = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": "local"}  # an embedded Ray of its own
    # As from a terminal: a shell without job control (CI's, launched in the background)
    # starts its commands with SIGINT ignored, and Python keeps it ignored.
    cli = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "from fedsim.cli import main; sys.exit(main())")
    proc = subprocess.Popen(
        [sys.executable, "-c", cli, "run", config, "--backend", backend,
         "--out", str(out), "--no-reference"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not _checkpointed(out, 1):
        assert proc.poll() is None and time.monotonic() < deadline, "no round completed"
        time.sleep(0.2)
    family = _descendants(proc.pid)
    proc.send_signal(sig)
    t0 = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30, "the run took too long to stop"
    assert proc.returncode == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("fedsim: interrupted after ") and \
        last.endswith(f"continue with: fedsim resume {out}"), stderr[-3000:]
    assert "Traceback" not in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["resume"].endswith(str(out))
    deadline = time.monotonic() + 60  # Ray's workers take a moment to exit
    while _alive(family) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(family), "processes left behind"
    assert main(["resume", str(out), "--backend", "inprocess", "--no-reference"]) == 0
    assert load_run(out).rounds.column("round").to_pylist() == list(range(40))


def test_resume_refuses_what_it_cannot_continue_in_one_line(tmp_path, capsys):
    cfg = _config(federation={"rounds": 1})
    config = _write_config(tmp_path, cfg)
    assert main(["run", config, "--backend", "inprocess", "--out", str(tmp_path / "done"),
                 "--no-reference"]) == 0
    capsys.readouterr()
    cases = {
        str(tmp_path / "done"): "the run is already completed; nothing to resume",
        str(tmp_path / "nothing"): "not a fedsim run directory (no manifest.json)",
    }
    # A run that stopped before its first round: nothing to resume from.
    (tmp_path / "early").mkdir()
    manifest = json.loads((tmp_path / "done" / "manifest.json").read_text())
    manifest["status"] = "failed"
    (tmp_path / "early" / "manifest.json").write_text(json.dumps(manifest))
    cases[str(tmp_path / "early")] = "no checkpoint.npz: the run stopped before its first"
    # A torn checkpoint (say, copied half-way) is named, not unpickled.
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "manifest.json").write_text(json.dumps(manifest))
    blob = (tmp_path / "done" / "checkpoint.npz").read_bytes()
    (tmp_path / "torn" / "checkpoint.npz").write_bytes(blob[: len(blob) // 2])
    cases[str(tmp_path / "torn")] = "checkpoint.npz is truncated or not a fedsim checkpoint"
    for run_dir, message in cases.items():
        assert main(["resume", run_dir, "--backend", "inprocess"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fedsim: error: ") and message in err[0], err


def test_an_out_dir_holding_a_run_is_refused_unless_overwrite(tmp_path, capsys, monkeypatch):
    cfg = _config(federation={"rounds": 1})
    config = _write_config(tmp_path, cfg)
    out = tmp_path / "run"
    assert main(["run", config, "--backend", "inprocess", "--out", str(out),
                 "--no-reference"]) == 0
    before = (out / "manifest.json").read_bytes()
    capsys.readouterr()
    assert main(["run", config, "--backend", "inprocess", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run (manifest.json)" in err[0]
    assert "--overwrite" in err[0] and f"fedsim resume {out}" in err[0]
    assert (out / "manifest.json").read_bytes() == before  # nothing touched
    # --overwrite: the old run's files go before the new run writes anything, so a new
    # run that fails early never sits beside the old one's model and metrics.
    _interrupt_at(monkeypatch, 0)
    assert main(["run", config, "--backend", "inprocess", "--out", str(out),
                 "--overwrite"]) == 130
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "manifest.json"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    # A file where the directory should be.
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert main(["run", config, "--backend", "inprocess", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a directory" in err[0]


def test_step_states_round_trip_through_json_and_foreign_classes_are_refused():
    from fedsim.privacy.adaptive_clipping import AdaptiveClipState

    state = ((("hospital-0", 3), ("hospital-1", 2)), AdaptiveClipState(0.25), None,
             float("inf"))
    assert checkpoint.decode_state(json.loads(json.dumps(
        checkpoint.encode_state(state)))) == state
    with pytest.raises(checkpoint.CheckpointError, match="a class outside fedsim"):
        checkpoint.decode_state({"dataclass": "os:system", "fields": {}})


def test_a_run_directory_in_use_by_a_live_driver_is_refused(tmp_path, capsys):
    import socket

    cfg = _config(federation={"rounds": 1})
    config = _write_config(tmp_path, cfg)
    out = tmp_path / "run"
    assert main(["run", config, "--backend", "inprocess", "--out", str(out),
                 "--no-reference"]) == 0
    assert not (out / "run.lock").exists()  # released at the end
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["status"] = "running"
    (out / "manifest.json").write_text(json.dumps(manifest))
    other = subprocess.Popen(["sleep", "60"])  # stands in for the live driver
    try:
        (out / "run.lock").write_text(json.dumps({"pid": other.pid,
                                                  "host": socket.gethostname()}))
        before = (out / "rounds.parquet").read_bytes()
        capsys.readouterr()
        for argv in (["resume", str(out), "--backend", "inprocess"],
                     ["run", config, "--backend", "inprocess", "--out", str(out),
                      "--overwrite"]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"is in use by fedsim process {other.pid}" in err[0]
        assert (out / "rounds.parquet").read_bytes() == before  # nothing touched
    finally:
        other.kill()
        other.wait()
    # Its process gone (as after a SIGKILL), the lock is stale and taken over.
    assert main(["run", config, "--backend", "inprocess", "--out", str(out), "--overwrite",
                 "--no-reference"]) == 0
