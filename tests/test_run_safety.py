"""fastcl run's output safety (issue 11, section 2): a directory per run, no silent overwrite,
fingerprinted and checksummed checkpoints, a locked run directory, atomic result files, an
unusable --out refused before training, a full disk, Ctrl-C."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fastcl.experiments
import fastcl.train
from fastcl import rundir
from fastcl.cli import main
from test_data import _write_mnist_dir

_FSYNC = os.fsync
TINY = ["--tasks", "2", "--per-task", "20", "--no-progress", "--no-plots"]


def run(capsys, *argv):
    """``fastcl run ARGV``: (exit status, stdout, stderr)."""
    rc = main(["run", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def no_temp_files(d: Path) -> bool:
    return not [f for f in d.rglob("*") if f.name.endswith(".tmp")]


# ------------------------------------------------------------------------------ default --out
def test_every_run_gets_its_own_directory_even_in_the_same_second(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frozen = time.gmtime(1_700_000_000)
    monkeypatch.setattr(rundir.time, "gmtime", lambda *a: frozen)  # both runs start "in the same second"
    for _ in range(2):
        rc, out, _ = run(capsys, "er-ring", *TINY, "--data", data_dir)
        assert rc == 0
    dirs = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert dirs == ["er-ring-permuted-mnist-20231114T221320Z", "er-ring-permuted-mnist-20231114T221320Z-2"]
    for d in dirs:
        assert (tmp_path / "results" / d / "results.json").is_file()
    assert f"results/{dirs[1]}/results.json" in out


def test_a_family_without_out_gets_its_own_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["cts", "--family", "synthetic2d", "--inner-steps", "2", "--repetitions", "1", "--cts-test-steps", "2",
            "--no-progress", "--no-plots"]
    assert run(capsys, *argv)[0] == 0 and run(capsys, *argv)[0] == 0
    dirs = list((tmp_path / "results").iterdir())
    assert len(dirs) == 2 and all(d.name.startswith("cts-synthetic2d-") for d in dirs)


def test_a_failed_run_leaves_no_empty_default_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "er-ring", *TINY, "--data", tmp_path / "nowhere")
    assert rc == 2 and "nowhere" in err
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").iterdir())


def test_an_existing_run_is_never_overwritten_unless_asked(tmp_path, data_dir, capsys):
    out = tmp_path / "x"
    assert run(capsys, "er-ring", *TINY, "--data", data_dir, "--out", out)[0] == 0
    before = (out / "results.json").read_bytes()
    rc, _, err = run(capsys, "hal", *TINY, "--data", data_dir, "--out", out, "--set", "k=2")
    assert rc == 2
    assert "already holds a run's results" in err and "--resume" in err and "--overwrite" in err
    assert (out / "results.json").read_bytes() == before
    # --overwrite replaces the run: the old checkpoints and results are gone
    rc, _, _ = run(capsys, "hal", *TINY, "--data", data_dir, "--out", out, "--set", "k=2", "--set",
                   "finetune_steps=2", "--overwrite")
    assert rc == 0
    assert set(json.loads((out / "results.json").read_text())["learners"]) == {"hal"}
    assert not (out / "checkpoint-er-ring-seed0.pt").exists()
    rc, _, err = run(capsys, "er-ring", *TINY, "--data", data_dir, "--out", out, "--resume", "--overwrite")
    assert rc == 2 and "exclude each other" in err


def test_an_existing_directory_without_a_run_is_accepted(tmp_path, data_dir, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert run(capsys, "er-ring", *TINY, "--data", data_dir, "--out", tmp_path)[0] == 0
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "results.json").is_file()


def test_resume_needs_out(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "er-ring", *TINY, "--data", data_dir, "--resume")
    assert rc == 2 and "--resume needs --out" in err


# ------------------------------------------------------------------------------ fingerprints
def test_resume_with_other_options_is_refused_naming_the_fields(tmp_path, data_dir, capsys):
    out = tmp_path / "x"
    base = ["er-ring", "--tasks", "3", "--data", data_dir, "--out", out, "--no-progress", "--no-plots"]
    assert run(capsys, *base, "--per-task", "30")[0] == 0
    before = (out / "results.json").read_bytes()
    rc, _, err = run(capsys, *base, "--per-task", "20", "--set", "lr=0.5", "--resume")
    assert rc == 2
    assert "another configuration" in err and "per_task: 30 -> 20" in err and "config.lr: 0.1 -> 0.5" in err
    assert "Traceback" not in err and (out / "results.json").read_bytes() == before
    rc, _, err = run(capsys, *base, "--per-task", "30", "--stream", "rotated-mnist", "--resume")
    assert rc == 2 and "stream: 'permuted-mnist' -> 'rotated-mnist'" in err
    rc, _, err = run(capsys, *base, "--per-task", "30", "--memory", "3", "--resume")
    assert rc == 2 and "memory: 1 -> 3" in err and "config.per_class: 1 -> 3" in err
    other = tmp_path / "other-data"
    other.mkdir()
    _write_mnist_dir(other, seed=1)
    rc, _, err = run(capsys, *[str(other) if a == data_dir else a for a in base], "--per-task", "30", "--resume")
    assert rc == 2 and "data_digest" in err
    # the same options resume (everything is done: the results are written again, unchanged)
    rc, printed, _ = run(capsys, *base, "--per-task", "30", "--resume")
    assert rc == 0 and "all 3 tasks already done" in printed
    acc = lambda res: res["learners"]["er-ring"]["runs"][0]["acc"]  # noqa: E731
    assert acc(json.loads((out / "results.json").read_text())) == acc(json.loads(before))


def test_a_hal_checkpoint_renamed_to_er_ring_is_refused(tmp_path, data_dir, capsys):
    out = tmp_path / "x"
    hal = ["hal", *TINY, "--data", data_dir, "--out", out, "--set", "k=2", "--set", "finetune_steps=2"]
    assert run(capsys, *hal)[0] == 0
    os.replace(out / "checkpoint-hal-seed0.pt", out / "checkpoint-er-ring-seed0.pt")
    rc, _, err = run(capsys, "er-ring", *TINY, "--data", data_dir, "--out", out, "--resume")
    assert rc == 2 and "learner: 'hal' -> 'er-ring'" in err and "learner_class: 'HAL' -> 'ERRing'" in err
    assert err.index("learner: 'hal'") < err.index("config.k: 2 -> <absent>")  # the learner is named first


def test_an_interrupted_run_resumes_and_says_so(tmp_path, data_dir, capsys, monkeypatch):
    out = tmp_path / "x"
    argv = ["er-ring", "--tasks", "3", "--per-task", "20", "--data", data_dir, "--out", out, "--no-progress",
            "--no-plots"]
    evaluate, calls = fastcl.train.evaluate, []

    def interrupted(*a, **k):  # Ctrl-C during the evaluation after the second task
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*a, **k)

    monkeypatch.setattr(fastcl.train, "evaluate", interrupted)
    rc, _, err = run(capsys, *argv)
    assert rc == 130
    assert err.strip() == f"fastcl run: interrupted; last checkpoint kept in {out}; resume with --resume --out {out}"
    assert rundir.load_checkpoint(out / "checkpoint-er-ring-seed0.pt")["next_task"] == 1
    assert no_temp_files(out)
    monkeypatch.setattr(fastcl.train, "evaluate", evaluate)
    rc, printed, _ = run(capsys, *argv, "--resume")
    assert rc == 0 and "er-ring seed 0: resuming from task 2/3" in printed
    assert run(capsys, *[tmp_path / "y" if a == out else a for a in argv])[0] == 0  # uninterrupted
    a, b = (json.loads((d / "results.json").read_text())["learners"]["er-ring"]["runs"][0]["acc"]
            for d in (out, tmp_path / "y"))
    assert a == b



def test_every_family_that_resumes_says_from_where(tmp_path, data_dir, capsys, monkeypatch):
    """FTML: "resuming from task k/T" after an interruption; CTS (which keeps finished runs only):
    how many of the (learner, seed) runs are done and that the others start over. (Continual and
    MAML: the tests above and test_meta_families_check_their_fingerprints.)"""
    import fastcl.experiments.ftml as ftml

    out = tmp_path / "f"
    argv = ["ftml", "--tasks", "2", "--per-task", "20", "--arrivals", "10", "--test-per-task", "10", "--data", data_dir,
            "--iterations", "1", "--inner-steps", "1", "--shots", "4", "--set", "finetune_steps=1", "--no-progress",
            "--no-plots", "--out", out]
    accuracy, calls = ftml._accuracy, []

    def interrupted(*a, **k):  # Ctrl-C at the first arrival of the second task (2 arrivals a task)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return accuracy(*a, **k)

    monkeypatch.setattr(ftml, "_accuracy", interrupted)
    assert run(capsys, *argv)[0] == 130
    monkeypatch.setattr(ftml, "_accuracy", accuracy)
    rc, printed, _ = run(capsys, *argv, "--resume")
    assert rc == 0 and "ftml seed 0: resuming from task 2/2" in printed

    cts = ["cts", "--inner-steps", "2", "--repetitions", "1", "--cts-test-steps", "2", "--seeds", "2", "--no-progress",
           "--no-plots", "--out", tmp_path / "c"]
    assert run(capsys, *cts)[0] == 0
    (tmp_path / "c" / "cts-seed1.json").unlink()
    rc, printed, _ = run(capsys, *cts, "--resume")
    assert rc == 0 and (f"resuming: 1 of 2 (learner, seed) runs already finished in {tmp_path / 'c'}; the other 1 "
                        "start from the beginning") in printed
    rc, printed, _ = run(capsys, *cts, "--resume")
    assert rc == 0 and f"all 2 runs already done ({tmp_path / 'c'})" in printed

def test_ctrl_c_before_the_first_checkpoint_leaves_nothing(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(fastcl.train, "evaluate", interrupted)
    rc, _, err = run(capsys, "er-ring", *TINY, "--data", data_dir)
    assert rc == 130 and err.strip() == "fastcl run: interrupted"
    assert not list((tmp_path / "results").iterdir())  # the new directory held nothing: removed


def test_meta_families_check_their_fingerprints(tmp_path, data_dir, capsys):
    maml = ["maml", "--family", "sinusoid", "--shots", "3", "--iterations", "2", "--maml-checkpoint-every", "1",
            "--maml-eval-curves", "2", "--maml-eval-points", "5", "--no-progress", "--no-plots",
            "--out", tmp_path / "m"]
    assert run(capsys, *maml)[0] == 0
    rc, _, err = run(capsys, *maml[:4], "4", *maml[5:], "--resume")
    assert rc == 2 and "shots: 3 -> 4" in err
    rc, printed, _ = run(capsys, *maml[:6], "3", *maml[7:], "--resume")  # more iterations: the run goes on
    assert rc == 0 and "maml seed 0: resuming from iteration 3/3" in printed
    rc, _, err = run(capsys, *maml[:6], "2", *maml[7:], "--resume")  # fewer iterations than the checkpoint's
    assert rc == 2 and "is at iteration 3, beyond --iterations 2" in err

    cts = ["cts", "--family", "synthetic2d", "--inner-steps", "2", "--repetitions", "1", "--cts-test-steps", "2",
           "--no-progress", "--no-plots", "--out", tmp_path / "c"]
    assert run(capsys, *cts)[0] == 0
    rc, _, err = run(capsys, *cts, "--set", "inner_lr=0.01", "--resume")
    assert rc == 2 and "config.inner_lr: 0.05 -> 0.01" in err
    rc, _, err = run(capsys, *cts, "--cts-start", "1,1", "--resume")
    assert rc == 2 and "cts_start: '-5,5' -> '1,1'" in err
    rc, printed, _ = run(capsys, *cts, "--resume")
    assert rc == 0 and "cts seed 0: finished run reused" in printed

    ftml = ["ftml", "--stream", "rainbow-mnist", "--tasks", "2", "--per-task", "20", "--arrivals", "10",
            "--test-per-task", "10", "--data", data_dir, "--iterations", "1", "--inner-steps", "1", "--shots", "4",
            "--set", "finetune_steps=1", "--no-progress", "--no-plots", "--out", tmp_path / "f"]
    assert run(capsys, *ftml)[0] == 0
    rc, _, err = run(capsys, *ftml, "--proficiency", "0.5", "--resume")
    assert rc == 2 and "threshold: 0.9 -> 0.5" in err
    rc, printed, _ = run(capsys, *ftml, "--resume")
    assert rc == 0 and "ftml seed 0: all 2 tasks already done" in printed


# ------------------------------------------------------------------------------ damaged checkpoints
def _flip_last_bytes(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-40:-8] = bytes(b ^ 0xFF for b in data[-40:-8])  # inside the pickled tensors' storage
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
    (lambda p: p.write_bytes(os.urandom(300)), "not a fastcl checkpoint"),
    (_flip_last_bytes, "SHA-256"),
])
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path, data_dir, capsys, damage, message):
    out = tmp_path / "x"
    argv = ["er-ring", *TINY, "--data", data_dir, "--out", out]
    assert run(capsys, *argv)[0] == 0
    ck = out / "checkpoint-er-ring-seed0.pt"
    damage(ck)
    rc, _, err = run(capsys, *argv, "--resume")
    assert rc == 2
    assert str(ck) in err and message in err and "delete it, or rerun without --resume" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_text(p.read_text()[:-20]), "not a fastcl run record"),
    (lambda p: p.write_text(p.read_text().replace('"final_adam": ', '"final_adam": 1')), "SHA-256"),
])
def test_a_damaged_cts_record_is_a_clear_error(tmp_path, capsys, damage, message):
    argv = ["cts", "--family", "synthetic2d", "--inner-steps", "2", "--repetitions", "1", "--cts-test-steps", "2",
            "--no-progress", "--no-plots", "--out", tmp_path]
    assert run(capsys, *argv)[0] == 0
    damage(tmp_path / "cts-seed0.json")
    rc, _, err = run(capsys, *argv, "--resume")
    assert rc == 2 and "cts-seed0.json" in err and message in err


def test_checkpoint_round_trip_and_tampering(tmp_path):
    p = tmp_path / "c.pt"
    state = {"w": torch.arange(6.0), "n": 3}
    rundir.save_checkpoint(p, state, rundir.fingerprint(a=1, cfg={"lr": 0.1}))
    got = rundir.load_checkpoint(p, rundir.fingerprint(a=1, cfg={"lr": 0.1}))
    assert torch.equal(got["w"], state["w"]) and got["n"] == 3
    with pytest.raises(rundir.RunDirError, match=r"a: 1 -> 2; cfg.lr: 0.1 -> 0.2"):
        rundir.load_checkpoint(p, rundir.fingerprint(a=2, cfg={"lr": 0.2}))
    with pytest.raises(rundir.RunDirError, match="b: <absent> -> 1"):
        rundir.load_checkpoint(p, rundir.fingerprint(a=1, cfg={"lr": 0.1}, b=1))
    data = p.read_bytes()
    i = data.rindex(torch.arange(6.0).numpy().tobytes())  # overwrite the tensor's bytes in place
    p.write_bytes(data[:i] + torch.zeros(6).numpy().tobytes() + data[i + 24:])
    with pytest.raises(rundir.RunDirError, match="SHA-256"):
        rundir.load_checkpoint(p)


# ------------------------------------------------------------------------------ lock, atomic writes
def test_a_second_run_into_a_locked_directory_is_refused(tmp_path, data_dir, capsys):
    out = tmp_path / "x"

    @rundir.releases_run_dirs
    def hold_and_run():  # a run holding --out, and a second one started into it meanwhile
        rundir.open_run_dir(out, learners=["er-ring"], what="permuted-mnist")
        return run(capsys, "er-ring", *TINY, "--data", data_dir, "--out", out)

    rc, _, err = hold_and_run()
    assert rc == 2 and "another fastcl run is writing into" in err
    assert not (out / "results.json").exists()
    assert run(capsys, "er-ring", *TINY, "--data", data_dir, "--out", out)[0] == 0  # released


def test_the_lock_holds_across_processes(tmp_path, data_dir, capsys):
    out = tmp_path / "x"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from fastcl import rundir; rundir.open_run_dir(sys.argv[1], learners=['a'], what='b'); "
        "print('locked', flush=True); sys.stdin.read()"), str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = run(capsys, "er-ring", *TINY, "--data", data_dir, "--out", out)
        assert rc == 2 and "another fastcl run is writing into" in err
    finally:
        holder.communicate("")
    assert run(capsys, "er-ring", *TINY, "--data", data_dir, "--out", out)[0] == 0


def test_atomic_writes_use_unique_temp_names_in_the_same_directory(tmp_path, monkeypatch):
    replaced = []
    real = os.replace
    monkeypatch.setattr(rundir.os, "replace", lambda a, b: (replaced.append((Path(a), Path(b))), real(a, b))[1])
    for i in range(2):
        rundir.atomic_write_json(tmp_path / "results.json", {"i": i})
    rundir.save_checkpoint(tmp_path / "c.pt", {"i": 1})
    temps = [a for a, _ in replaced]
    assert len(set(temps)) == 3 and all(a.parent == tmp_path for a in temps)
    assert json.loads((tmp_path / "results.json").read_text()) == {"i": 1} and no_temp_files(tmp_path)
    (tmp_path / "plain").write_text("")  # the files have the mode open() gives, not mkstemp's 0600
    assert (tmp_path / "results.json").stat().st_mode == (tmp_path / "plain").stat().st_mode


# ------------------------------------------------------------------------------ unusable --out, full disk
@pytest.fixture
def no_training(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(fastcl.experiments.continual, "run_stream", fail)


def test_out_under_a_regular_file_fails_before_training(tmp_path, data_dir, capsys, no_training):
    (tmp_path / "file").write_text("x")
    for argv in (["er-ring", *TINY, "--data", data_dir],
                 ["maml", "--iterations", "1", "--no-progress", "--no-plots"],
                 ["cts", "--family", "synthetic2d", "--repetitions", "1", "--no-progress", "--no-plots"],
                 ["ftml", "--tasks", "1", "--per-task", "20", "--data", data_dir, "--no-progress", "--no-plots"]):
        rc, _, err = run(capsys, *argv, "--out", tmp_path / "file" / "sub")
        assert rc == 2 and "cannot create --out" in err and "Traceback" not in err


def test_read_only_out_fails_before_training(tmp_path, data_dir, capsys, monkeypatch, no_training):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root ignores the mode: refuse new files there as the mode would
        real_open = os.open

        def refusing_open(path, flags, *a, **k):
            if Path(path).parent == ro and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_open(path, flags, *a, **k)
        monkeypatch.setattr(rundir.os, "open", refusing_open)
    try:
        rc, _, err = run(capsys, "er-ring", *TINY, "--data", data_dir, "--out", ro)
    finally:
        ro.chmod(0o755)
    assert rc == 2 and f"cannot write into --out {ro}" in err and "Permission denied" in err


def _fsync_fails_on_call(monkeypatch, n):
    real, calls = _FSYNC, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(rundir.os, "fsync", fsync)


def test_a_full_disk_is_a_clear_error_and_leaves_no_temp_file(tmp_path, data_dir, capsys, monkeypatch):
    out = tmp_path / "x"
    argv = ["er-ring", "--tasks", "3", "--per-task", "20", "--data", data_dir, "--out", out, "--no-progress",
            "--no-plots"]
    _fsync_fails_on_call(monkeypatch, 1)  # at once: refused before training
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and "the disk is full" in err and not list(out.glob("checkpoint-*")) and no_temp_files(out)
    _fsync_fails_on_call(monkeypatch, 3)  # write test, checkpoint after task 1, then the one after task 2 fails
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and "checkpoint-er-ring-seed0.pt" in err and "No space left on device" in err
    assert "Traceback" not in err and no_temp_files(out)
    assert rundir.load_checkpoint(out / "checkpoint-er-ring-seed0.pt")["next_task"] == 1  # the last one kept
    monkeypatch.undo()
    assert run(capsys, *argv, "--resume")[0] == 0
    before = (out / "results.json").read_bytes()
    _fsync_fails_on_call(monkeypatch, 2)  # everything done: the results.json write fails, the old one stays
    rc, _, err = run(capsys, *argv, "--resume")
    assert rc == 2 and "results.json" in err and (out / "results.json").read_bytes() == before
    assert no_temp_files(out)


# ------------------------------------------------------------------------------ Ctrl-C (a real SIGINT)
def _env():
    """The environment of a subprocess that imports this checkout's fastcl."""
    path = [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def test_sigint_prints_one_line_keeps_the_checkpoint_and_exits_130(tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    _write_mnist_dir(data, n_train=60, n_test=400)  # evaluation of 60 tasks after each task: a long run
    out = tmp_path / "x"
    proc = subprocess.Popen([sys.executable, "-m", "fastcl.cli", "run", "er-ring", "--tasks", "60", "--per-task", "20",
                             "--data", str(data), "--out", str(out), "--no-progress", "--no-plots", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            # a test run before this one may leave SIGINT ignored in this process (a child
                            # inherits SIG_IGN, and Python then installs no KeyboardInterrupt handler)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ck = out / "checkpoint-er-ring-seed0.pt"
    try:
        while not ck.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert err.strip() == f"fastcl run: interrupted; last checkpoint kept in {out}; resume with --resume --out {out}"
    state = rundir.load_checkpoint(ck)
    assert 1 <= state["next_task"] < 60 and no_temp_files(out)
    assert not (out / "results.json").exists()


def test_a_foreign_checkpoint_is_refused_before_anything_trains(tmp_path, data_dir, capsys):
    out = tmp_path / "x"
    assert run(capsys, "agem", *TINY, "--data", data_dir, "--out", out)[0] == 0
    (out / "results.json").unlink()
    # er-ring has no checkpoint and comes first; agem's was written with --memory 1
    rc, _, err = run(capsys, "er-ring,agem", *TINY, "--data", data_dir, "--out", out, "--memory", "3", "--resume")
    assert rc == 2 and "memory: 1 -> 3" in err
    assert not (out / "checkpoint-er-ring-seed0.pt").exists()  # er-ring did not train
    common = ["--seeds", "2", "--no-progress", "--no-plots"]
    maml = ["maml", "--shots", "3", "--maml-eval-curves", "2", "--out", tmp_path / "m", *common]
    assert run(capsys, *maml, "--iterations", "1")[0] == 0
    (tmp_path / "m" / "checkpoint-maml-seed1.pt").write_bytes(b"")
    seed0 = (tmp_path / "m" / "checkpoint-maml-seed0.pt").read_bytes()
    rc, _, err = run(capsys, *maml, "--iterations", "2", "--resume")  # seed 0 would train one more iteration
    assert rc == 2 and "checkpoint-maml-seed1.pt is empty" in err
    assert (tmp_path / "m" / "checkpoint-maml-seed0.pt").read_bytes() == seed0
    cts = ["cts", "--inner-steps", "2", "--repetitions", "1", "--cts-test-steps", "2", "--out", tmp_path / "c", *common]
    assert run(capsys, *cts)[0] == 0
    (tmp_path / "c" / "cts-seed0.json").unlink()  # seed 0 would run again
    (tmp_path / "c" / "cts-seed1.json").write_text("{")
    rc, _, err = run(capsys, *cts, "--resume")
    assert rc == 2 and "cts-seed1.json is not a fastcl run record" in err
    assert not (tmp_path / "c" / "cts-seed0.json").exists()
    ftml = ["ftml", "--tasks", "2", "--per-task", "20", "--arrivals", "10", "--test-per-task", "10", "--data", data_dir,
            "--iterations", "1", "--inner-steps", "1", "--shots", "4", "--set", "finetune_steps=1",
            "--out", tmp_path / "f", *common]
    assert run(capsys, *ftml)[0] == 0
    (tmp_path / "f" / "checkpoint-ftml-seed0.pt").unlink()
    (tmp_path / "f" / "checkpoint-ftml-seed1.pt").write_bytes(b"garbage")
    rc, _, err = run(capsys, *ftml, "--resume")
    assert rc == 2 and "checkpoint-ftml-seed1.pt is not a fastcl checkpoint" in err
    assert not (tmp_path / "f" / "checkpoint-ftml-seed0.pt").exists()
