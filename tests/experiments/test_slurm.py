"""Sweeps through a real SLURM controller (hydra/launcher=slurm, submitit), and their faults.

The tests marked ``slurm`` submit jobs with sbatch and need a cluster whose ``sinfo`` and
``sacct`` answer; the one-node cluster of ``scripts/slurm-local.sh start`` is enough (2 CPUs
are enough). Without one they skip and say how to start it; with ``PTQ_REQUIRE_SLURM=1`` (what
.ci/slurm sets after starting the cluster) they fail instead. The jobs run
``python -m experiments.run -m ... hydra/launcher=slurm`` with the resources of
conf/hydra/launcher/slurm.yaml unchanged, except where a test asks for a tiny limit on purpose.

    scripts/slurm-local.sh start          # as root
    python -m pytest -m slurm tests/experiments/test_slurm.py
    scripts/slurm-local.sh stop
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from omegaconf import OmegaConf

from experiments import measure, records, sweep
from experiments import run as run_mod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP = "order"  # 2 smoke points: the clean sweep, one round of 2 jobs on 2 CPUs
PRESET = "lam_sweep"  # 4 smoke points: enough to cancel one while others run
ONE_POINT = ["algorithm.lam=0.001", "data.m=32", "data.seed=0"]  # one of lam_sweep's, fixed
# Not compared: when and how long (wall_s) a run took, and the commit, which moves when anyone
# commits while the test runs; everything a run computes must be equal, bit for bit, since the
# jobs run the same code on the same machine as the in-process sweep.
UNCOMPARED = ("created", "wall_s", "versions", "config")


def _cluster_problem() -> str | None:
    """Why no SLURM cluster can take jobs from here, or None when one can."""
    missing = [c for c in ("sinfo", "sbatch", "srun", "sacct", "squeue", "scancel")
               if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    try:
        info = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                              timeout=15)
        # submitit learns from sacct that a job died without a result: accounting must answer.
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True,
                              timeout=15)
    except subprocess.TimeoutExpired as exc:
        return f"`{' '.join(exc.cmd)}` did not answer within 15 s"
    if info.returncode != 0:
        return f"sinfo failed: {info.stderr.strip()[:200]}"
    states = {s.rstrip("*~#") for s in info.stdout.split()}
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no node can run jobs (sinfo states: {sorted(states) or 'none'})"
    if acct.returncode != 0:
        return f"sacct failed (job accounting is off?): {acct.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem is not None:
        message = (f"no SLURM cluster to submit to ({problem}); start the one-node cluster with "
                   "`scripts/slurm-local.sh start`, as root (README, 'On a SLURM cluster')")
        if os.environ.get("PTQ_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def job_name(cluster):
    """A job name of this test's own; its jobs still queued at the end are cancelled."""
    name = f"ptq-test-{uuid.uuid4().hex[:8]}"
    yield name
    # A job whose result is in may still be finishing: give it a moment before cancelling.
    deadline = time.time() + 20
    while _queue(name) and time.time() < deadline:
        time.sleep(0.5)
    subprocess.run(["scancel", f"--name={name}"], capture_output=True)
    _drain(name, timeout=60)


def _local(tmp_path_factory, preset) -> dict[str, dict]:
    """The same sweep run locally (in-process, as experiments.reproduce runs it): id -> record."""
    out = tmp_path_factory.mktemp(f"local-{preset}")
    result = sweep.run_sweep(preset, "smoke", [f"out_dir={out}"], progress=False)
    assert result.ran == len(sweep.points(preset, "smoke"))
    return {r["id"]: r for r in _records(out)}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return _local(tmp_path_factory, PRESET)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    return _local(tmp_path_factory, SWEEP)


def _records(folder) -> list[dict]:
    """Every record in the folder; each must be whole JSON (json.load raises otherwise)."""
    out = []
    for f in records.record_files([str(folder)]):
        with open(f) as fh:
            out.append(json.load(fh))
    return out


def _mtimes(folder) -> dict[str, int]:
    return {f: os.stat(f).st_mtime_ns for f in records.record_files([str(folder)])}


def _command(tmp_path, out, name, *overrides, preset=PRESET) -> list[str]:
    sweep_dir = tmp_path / f"hydra-{uuid.uuid4().hex[:6]}"
    return [sys.executable, "-m", "experiments.run", "-m", f"+experiment={preset}", "size=smoke",
            "hydra/launcher=slurm", f"out_dir={out}", f"hydra.sweep.dir={sweep_dir}",
            f"hydra.launcher.name={name}", *overrides]


def _submit(tmp_path, out, name, *overrides, preset=PRESET,
            timeout=300) -> subprocess.CompletedProcess:
    """Submit the sweep and wait, as a user does: the command returns when every job is done."""
    return subprocess.run(_command(tmp_path, out, name, *overrides, preset=preset), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _start(tmp_path, out, name, *overrides) -> tuple[subprocess.Popen, str]:
    log = tmp_path / f"sweep-{uuid.uuid4().hex[:6]}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(_command(tmp_path, out, name, *overrides), cwd=ROOT,
                                stdout=fh, stderr=subprocess.STDOUT)
    return proc, str(log)


def _wait(proc: subprocess.Popen, log: str, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        pytest.fail(f"the sweep did not end within {timeout:.0f} s:\n{open(log).read()[-3000:]}")


def _queue(name) -> list[tuple[str, str, str]]:
    """(job id, state, elapsed) of each of the name's jobs still queued, array tasks apart."""
    out = subprocess.run(["squeue", "-h", "-r", f"--name={name}", "-o", "%i|%T|%M"],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def _drain(name, timeout: float) -> None:
    deadline = time.time() + timeout
    while _queue(name) and time.time() < deadline:
        time.sleep(1)
    assert not _queue(name), f"jobs {name} still queued after {timeout:.0f} s"


def _accounting(name, expect: int | None = None, timeout: float = 30) -> list[dict[str, str]]:
    """sacct's allocation lines of the name's jobs (one per array task).

    slurmdbd records a job a moment after slurmctld has let it go, so a job that has left the
    queue may not be in sacct yet: with ``expect``, wait (up to ``timeout`` seconds) until that
    many lines are there and none is still PENDING or RUNNING, and return what is there then.
    """
    fields = ["JobID", "State", "AllocCPUS", "ReqMem", "Timelimit"]
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", f"--name={name}", "-S", "now-1hour",
                              "-o", ",".join(fields)], capture_output=True, text=True, check=True)
        jobs = [dict(zip(fields, line.split("|"))) for line in out.stdout.splitlines() if line]
        settled = not any(j["State"] in ("PENDING", "RUNNING") for j in jobs)
        if expect is None or (len(jobs) >= expect and settled) or time.time() > deadline:
            return jobs
        time.sleep(0.5)


def _assert_same(got: dict, want: dict) -> None:
    assert got["status"] == "ok", got.get("error")
    assert got["id"] == want["id"]
    for k in set(got) | set(want):
        if k not in UNCOMPARED:
            assert got.get(k) == want.get(k), (got["id"], k)
    strip = lambda c: {k: v for k, v in c.items() if k not in records.UNHASHED}  # noqa: E731
    assert strip(got["config"]) == strip(want["config"])


def _seconds(slurm_time: str) -> int:
    """SLURM's [days-]hours:minutes:seconds as seconds."""
    days, _, hms = slurm_time.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def _launcher_config():
    with sweep._initialized():
        from hydra import compose

        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


@pytest.mark.slurm
def test_slurm_sweep_equals_the_local_one_and_resubmitting_recomputes_nothing(
        tmp_path, job_name, local_sweep):
    out = tmp_path / "records"
    proc = _submit(tmp_path, out, job_name, preset=SWEEP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _records(out)
    assert sorted(r["id"] for r in recs) == sorted(local_sweep)
    for r in recs:
        _assert_same(r, local_sweep[r["id"]])
    # The jobs went through slurmctld with the launcher config's resources, unchanged. (A job
    # whose result the command has read may still be finishing: wait until none is queued.)
    _drain(job_name, timeout=60)
    conf = _launcher_config()
    jobs = _accounting(job_name, expect=len(local_sweep))
    assert len(jobs) == len(local_sweep) and {j["State"] for j in jobs} == {"COMPLETED"}
    for j in jobs:
        assert int(j["AllocCPUS"]) == conf["cpus_per_task"]
        assert j["ReqMem"] in (f"{conf['mem_gb']}G", f"{conf['mem_gb'] * 1024}M")
        assert _seconds(j["Timelimit"]) == 60 * conf["timeout_min"]

    before = _mtimes(out)
    again = _submit(tmp_path, out, job_name, preset=SWEEP)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _mtimes(out) == before  # every job found its record: none rewritten, none added
    _drain(job_name, timeout=60)
    again_jobs = _accounting(job_name, expect=2 * len(local_sweep))
    assert [j["State"] for j in again_jobs] == ["COMPLETED"] * 2 * len(local_sweep)


# What a job of the cancel test does before its run starts (the launcher's `setup` lines go into
# the sbatch script ahead of the srun that starts Python): a task that started under HOLD_S / 2
# ago is cancelled before its run has begun, however fast the machine runs the run itself (one
# took 3-8 s on the machines seen, mostly importing JAX, so a run cannot be caught reliably).
HOLD_S = 8


def _pick_victim(name, deadline) -> str:
    """A task to cancel mid-sweep: a running one that started under HOLD_S / 2 seconds ago,
    still in its setup, so it dies before it can write its record.

    Not a pending one: SLURM 22.05 keeps no accounting line for an array task cancelled before
    it started, so submitit, which learns the fate of a job from sacct, would wait for it forever.
    """
    while time.time() < deadline:
        running = [(_seconds(f"0:{e}" if e.count(":") == 1 else e), i)
                   for i, s, e in _queue(name) if s == "RUNNING"]
        fresh = [i for t, i in sorted(running) if t < HOLD_S / 2]
        if fresh:
            return fresh[0]
        time.sleep(0.2)
    pytest.fail(f"no job of {name} to cancel: {_queue(name)}")


@pytest.mark.slurm
def test_cancelled_job_is_redone_and_no_finished_record_is_lost_or_duplicated(
        tmp_path, job_name, local):
    out = tmp_path / "records"
    proc, log = _start(tmp_path, out, job_name, f"hydra.launcher.setup=['sleep {HOLD_S}']")
    deadline = time.time() + 180
    while not records.record_files([str(out)]) and time.time() < deadline:
        assert proc.poll() is None, open(log).read()[-3000:]
        time.sleep(0.2)
    victim = _pick_victim(job_name, deadline)
    finished = _mtimes(out)  # records whole before the cancel: they must survive untouched
    subprocess.run(["scancel", victim], check=True)
    # submitit sees the cancelled task through sacct and the command fails, naming it.
    assert _wait(proc, log, timeout=180) != 0
    assert victim.split("_")[0] in open(log).read()
    _drain(job_name, timeout=120)  # the other tasks finish on their own
    after = _records(out)  # all whole
    assert all(r["status"] == "ok" for r in after)
    assert len(after) == len(local) - 1  # exactly the cancelled run is missing

    proc = _submit(tmp_path, out, job_name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _records(out)
    assert len(recs) == len(local) and sorted(r["id"] for r in recs) == sorted(local)
    for r in recs:
        _assert_same(r, local[r["id"]])
    now = _mtimes(out)
    assert all(now[f] == t for f, t in finished.items())  # not recomputed, not rewritten
    _drain(job_name, timeout=60)
    jobs = _accounting(job_name, expect=2 * len(local))
    assert sum(j["State"].startswith("CANCELLED") for j in jobs) == 1, jobs


@pytest.mark.slurm
def test_out_of_memory_and_time_limit_kills_leave_whole_records_and_a_retry_completes(
        tmp_path, job_name, local):
    """Deliberately tiny limits: 200 MB of memory (a run peaks near 400 MB, JAX included), and
    a one-minute time limit for a layer that needs well over a minute. SLURM sends its
    time-limit warning (submitit's --signal, 120 s ahead of the end, so due at once) on its next
    time-limit pass, which came 35 s after the start here: the layer must outlast that, and it
    costs no more than that since the run stops there. Both jobs run at once (one CPU each)."""
    oom_out, tl_out = tmp_path / "oom", tmp_path / "timelimit"
    oom, oom_log = _start(tmp_path, oom_out, job_name, *ONE_POINT, "hydra.launcher.mem_gb=null",
                          "hydra.launcher.mem_per_cpu=200M")
    # N = 4096, m = 8192 took 34-40 s here (bounds 22 s); N = 6144 needs about 3.4 times the
    # float64 bounds' N^3 work, over a minute and a half, in under 3 GB.
    big = ["data.m=4096", "data.N=6144", "data.n=64"]
    tl, tl_log = _start(tmp_path, tl_out, job_name, *ONE_POINT[:1], *big, "data.seed=0",
                        "hydra.launcher.timeout_min=1", "hydra.launcher.mem_gb=6")

    # Out of memory: slurmstepd kills the step, the sweep fails (no result), nothing is recorded.
    assert _wait(oom, oom_log, timeout=180) != 0
    text = open(oom_log).read()
    assert "has not produced any output" in text
    assert _records(oom_out) == []
    # A clean retry: the same sweep with the launcher's own resources completes the run.
    proc = _submit(tmp_path, oom_out, job_name, *ONE_POINT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = _records(oom_out)
    _assert_same(rec, local[rec["id"]])
    assert any("OUT_OF_MEMORY" in j["State"] or "FAILED" in j["State"]
               for j in _accounting(job_name))

    # Time limit: the warning reaches the run while it computes and it is recorded as an error
    # (retried by the next sweep), or it lands before the run started computing and the job
    # fails with nothing recorded. Never an ok record made after the warning.
    _wait(tl, tl_log, timeout=240)
    _drain(job_name, timeout=120)
    recs = _records(tl_out)
    assert len(recs) <= 1
    if recs and recs[0]["status"] == "ok":
        pytest.fail("the run finished before SLURM's time-limit warning came: on this machine "
                    f"the layer {big} is too small to outlast it")
    if recs:
        assert recs[0]["error"].startswith("SchedulerStop") and "timed-out" in recs[0]["error"]
    print(f"time limit: {'an error record' if recs else 'no record, the job failed'}; jobs:",
          _accounting(job_name))


def test_time_limit_warning_is_not_swallowed_by_code_that_records_its_failures(
        compose_cfg, tmp_path, monkeypatch):
    """Without a cluster: submitit's SIGUSR2 handler raises an Exception wherever the run is;
    a bound that catches Exception to record its own failure must not turn it into an ok run."""

    class Uncompleted(RuntimeError):  # what submitit's handler raises when it cannot requeue
        pass

    def submitit_like(signum, frame):
        raise Uncompleted("Job not requeued because: timed-out too many times.")

    def compute(spec, layer):
        try:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(1)  # the handler runs here
        except Exception:  # noqa: BLE001 (what experiments.bounds does per bound)
            pass
        return {"measured": {}}

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        monkeypatch.setattr(measure, "compute", compute)
        rec = run_mod.run(compose_cfg([f"out_dir={tmp_path}"]))
        assert signal.getsignal(signal.SIGUSR2) is submitit_like  # put back as it was
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert rec["status"] == "error" and rec["error"].startswith("SchedulerStop: Uncompleted")
    (f,) = records.record_files([str(tmp_path)])
    assert json.load(open(f))["status"] == "error"
