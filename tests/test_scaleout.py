"""Scale-out (issue 6): the patient axis sharded over 8 virtual CPU devices, a trial run by 2 processes,
a killed trial resumed, the subjects of a Laplace fit sharded.

Every check runs in subprocesses: the device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before it is imported) and a process
joins a multi-process runtime once. The subprocesses share a persistent compilation cache (PKPD_JAX_CACHE
when set, as ``make test`` does, else a temporary directory), so programs compiled by one are loaded by the
next instead of compiled again; only the second process of the two-process run always compiles (JAX
writes the cache from process 0 only, and process 1's programs are keyed by its own device ids). The trial is tiny (4 patients in 2 chunks, 2 draws, 2 gradient steps, one product, no cross-entropy
generation of 2 cross-entropy candidates): what is checked is the batching, not the optimizer.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

TRIAL_SETTINGS = (
    "OptimizeSettings(draws=2, steps=2, batch_draws=2, score_draws=2, cem_draws=2, cem_generations=1, "
    'cem_candidates=2, products=("acetaminophen/po",))'
)
TRIAL = dict(n=4, seed=1, chunk=2)

COMMON = textwrap.dedent(f"""
    import json, pickle, sys, time
    from pathlib import Path
    import numpy as np
    import jax
    from pkpd import batch
    from regimens.optimize import OptimizeSettings, run_trial
    SETTINGS = {TRIAL_SETTINGS}
    TRIAL = {TRIAL!r}
    out = Path(sys.argv[1])
    """)

EIGHT = COMMON + textwrap.dedent("""
    import pandas as pd
    from pkpd.patients import spine72_population
    from pkpd.population import simulate_regimen
    from regimens import get_regimen
    assert jax.local_device_count() == 8 and jax.config.jax_enable_x64
    res = {"devices": jax.local_device_count()}
    # the SPINE-72 trial in memory on 1 device (its programs then sit in the compilation cache)
    batch.configure(devices=1)
    res["trial1"] = run_trial(TRIAL["n"], TRIAL["seed"], SETTINGS, chunk=TRIAL["chunk"])[0]
    pickle.dump(res["trial1"], open(out / "trial1.pkl", "wb"))
    (out / "trial1.done").write_text("")
    # a population run: 130 patients (1 device: sub-batches of 64 rows; 8 devices: 17 rows each)
    pop = spine72_population(130, 7)
    for nd in (1, 8):
        batch.configure(devices=nd)
        with batch.record_shardings() as rec:
            r = simulate_regimen(get_regimen("C0"), pop, seed=3)
        res[f"sim{nd}"] = {"patients": r.patients, "doses": r.doses, "nrs": r.nrs, "records": rec}
    # the trial through a chunk store, exact simulations sharded over 8 devices
    batch.configure(devices=8)
    with batch.record_shardings() as rec:
        res["trial8"] = run_trial(TRIAL["n"], TRIAL["seed"], SETTINGS, chunk=TRIAL["chunk"], store=out / "store8")[0]
    res["trial8_records"] = rec
    pickle.dump(res, open(out / "eight.pkl", "wb"))
    """)

FIT = textwrap.dedent("""
    import pickle, sys
    from pathlib import Path
    import numpy as np, pandas as pd, jax, jax.numpy as jnp
    from pkpd import batch
    from pkpd.fit.spec import load_model
    from pkpd.fit.problem import build_problem
    from pkpd.fit.laplace import _modes_jit, _vg_jit, fit_laplace
    from pkpd.fit.shard import shard_problem
    assert jax.local_device_count() == 8
    rng = np.random.default_rng(3)
    rows, T = [], [0.25, 0.5, 1, 2, 4, 6, 8, 12]
    for i in range(10):  # 10 subjects with 5-8 observations each (unequal shards)
        cl, v = 2.0 * np.exp(0.3 * rng.normal()), 20 * np.exp(0.2 * rng.normal())
        rows.append(dict(ID=i + 1, TIME=0.0, AMT=100.0, DV=0.0, MDV=1, EVID=1, CMT=1))
        for t in T[:5 + i % 4]:
            rows.append(dict(ID=i + 1, TIME=t, AMT=0.0, DV=100 / v * np.exp(-cl / v * t) * (1 + 0.1 * rng.normal()),
                             MDV=0, EVID=0, CMT=1))
    spec = {"model": {"structure": "1cmt_iv"},
            "parameters": {"CL": {"estimate": 1.5, "iiv": 0.1}, "V": {"estimate": 15.0, "iiv": 0.1}},
            "observations": {"c": {"output": "CP", "error": "proportional", "proportional": 0.2}}}
    prob = build_problem(pd.DataFrame(rows), load_model(spec))
    u = jnp.asarray(prob.init_u())
    uf = prob.packer.full(u)
    e0 = jnp.zeros((prob.n_id, prob.n_eta))
    out = {}
    eta, H, ok, _ = _modes_jit(prob, uf, e0)
    out["one"] = [np.asarray(x) for x in (eta, H, ok, *_vg_jit(prob, u, eta, H))]
    sp = shard_problem(prob)
    eta, H, ok, _ = sp.modes(uf, e0)
    out["eight"] = [np.asarray(x) for x in (eta, H, ok, *sp.value_and_grad(u, eta, H))]
    out["shards"] = [(s.device.id, tuple(s.data.shape)) for s in jax.tree_util.tree_leaves(sp.stacked)[0].addressable_shards]
    for nd in (1, 8):
        batch.configure(devices=nd)
        f = fit_laplace(prob)
        out[f"fit{nd}"] = (f.u_full, f.minus2ll, f.cov_u, f.n_iter)
    pickle.dump(out, open(Path(sys.argv[1]) / "fit.pkl", "wb"))
    """)

PROCESS = COMMON + textwrap.dedent("""
    index, count = batch.setup(coordinator=sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
    patients = run_trial(TRIAL["n"], TRIAL["seed"], SETTINGS, chunk=TRIAL["chunk"], store=out / "store",
                         wait_timeout_s=600)[0]
    pickle.dump({"index": index, "count": count, "patients": patients}, open(out / f"process{index}.pkl", "wb"))
    """)

KILLED = COMMON + textwrap.dedent("""
    resume = sys.argv[2] == "resume"

    def progress(done, stage):
        if stage == "chunk done" and not resume:
            time.sleep(600)  # a long run: the test kills the process here, after its first chunk

    patients = run_trial(TRIAL["n"], TRIAL["seed"], SETTINGS, chunk=TRIAL["chunk"], store=out / "store",
                         resume=resume, progress=progress)[0]
    pickle.dump(patients, open(out / "resumed.pkl", "wb"))
    """)


def _cache_dir(tmp_path_factory) -> Path:
    """The project's compilation cache when one is set (``make test``: PKPD_JAX_CACHE), else a fresh one."""
    given = os.environ.get("PKPD_JAX_CACHE", "").strip()
    if given and given.lower() not in ("off", "0", "no", "none", "false"):
        return Path(given)
    return tmp_path_factory.mktemp("jax_cache")


def _env(cache: Path, devices: int | None = None) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    for k in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "PKPD_PRECISION"):
        env.pop(k, None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Job:
    """A script in a subprocess; ``result()`` waits and returns (returncode, stderr tail, seconds)."""

    def __init__(self, work: Path, name: str, text: str, args, env):
        script = work / f"{name}.py"
        script.write_text(text)
        self.t0 = time.perf_counter()
        self.log = work / f"{name}.log"
        with open(self.log, "w") as log:  # a file, not a pipe: a chatty child never blocks on a full pipe
            self.proc = subprocess.Popen(
                [sys.executable, str(script), *map(str, args)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log
            )
        self.out = None

    def result(self, timeout: float = 600):
        if self.out is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.out = (self.proc.returncode, self.log.read_text()[-4000:], time.perf_counter() - self.t0)
        return self.out


def _ok(job: _Job):
    code, err, _ = job.result()
    assert code == 0, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every subprocess of this module, overlapped on the machine's cores: the Laplace check and the
    8-device process start together; when the 8-device process has compiled the trial (its 1-device run, now
    in the compilation cache), the trial to be killed starts beside it, and once it is killed its resumption
    and the two-process trial."""
    work = tmp_path_factory.mktemp("scaleout")
    cache = _cache_dir(tmp_path_factory)
    jobs = {
        "fit": _Job(work, "fit", FIT, [work], _env(cache, 8)),
        "eight": _Job(work, "eight", EIGHT, [work], _env(cache, 8)),
    }
    t0 = time.monotonic()
    while not (work / "trial1.done").exists() and jobs["eight"].proc.poll() is None and time.monotonic() - t0 < 600:
        time.sleep(0.1)
    killed = work / "killed"
    killed.mkdir()
    jobs["killed"] = _Job(work, "killed", KILLED, [killed, "first"], _env(cache))
    first = killed / "store" / "chunk-000000.json"
    t0 = time.monotonic()
    while not first.exists() and jobs["killed"].proc.poll() is None and time.monotonic() - t0 < 600:
        time.sleep(0.05)
    jobs["killed"].proc.send_signal(signal.SIGKILL)
    jobs["killed"].result()
    after_kill = sorted(p.name for p in (killed / "store").glob("chunk-*.json")) if first.exists() else []
    kept = {p.name: p.stat().st_mtime_ns for p in (killed / "store").glob("chunk-000000*")}
    jobs["resume"] = _Job(work, "resume", KILLED, [killed, "resume"], _env(cache))
    addr = f"127.0.0.1:{_free_port()}"
    (work / "mp").mkdir()
    for i in (0, 1):
        jobs[f"process{i}"] = _Job(work, f"process{i}", PROCESS, [work / "mp", addr, i], _env(cache))
    for job in jobs.values():
        job.result()
    (work / "seconds.json").write_text(json.dumps({k: round(j.result()[2], 1) for k, j in jobs.items()}))
    yield {"work": work, "jobs": jobs, "after_kill": after_kill, "kept": kept}
    for job in jobs.values():
        if job.proc.poll() is None:
            job.proc.kill()


@pytest.fixture(scope="module")
def eight(runs):
    _ok(runs["jobs"]["eight"])
    return pickle.load(open(runs["work"] / "eight.pkl", "rb"))


def _sharded_over_8(rec: dict, rows: int):
    """A RowProgram call record: inputs and outputs on 8 devices, each with its own rows."""
    assert rec["devices"] == 8 and rec["rows"] == rows
    per = max(-(-rows // 8), 2)  # at least 2 rows per device (pkpd.batch.MIN_ROWS)
    assert rec["padded_rows"] == 8 * per
    for side in ("input", "output"):
        assert rec[side]["devices"] == 8
        shards = rec[side]["shards"]
        assert sorted(d for d, _ in shards) == list(range(8))  # one shard on each of the 8 devices
        assert all(shape[0] == per for _, shape in shards)  # ... holding 1/8 of the (padded) rows


def test_population_run_is_bit_identical_on_8_devices(eight):
    """simulate_regimen of 130 SPINE-72 patients (C0: PCA feedback, sampled demand): every per-patient outcome,
    the NRS trajectories and the dose record are bit for bit the 1-device ones; the kernel's inputs and outputs
    were sharded over the 8 devices (17 rows each, 6 of them padding), not replicated."""
    one, many = eight["sim1"], eight["sim8"]
    assert eight["devices"] == 8
    pd.testing.assert_frame_equal(one["patients"], many["patients"], check_exact=True)
    pd.testing.assert_frame_equal(one["doses"], many["doses"], check_exact=True)
    assert np.array_equal(one["nrs"], many["nrs"])
    assert (one["doses"]["KIND"] == "pca").sum() > 130  # demand doses were given: the feedback loop ran
    assert [r["devices"] for r in one["records"]] == [1]
    (rec,) = many["records"]
    _sharded_over_8(rec, 130)


def test_trial_is_bit_identical_on_8_devices(eight):
    """run_trial (4 patients in 2 chunks) with the exact simulations and the optimizer's relaxed stages
    (cross-entropy scores, gradient steps, rounding scores) sharded over 8 devices and written through a chunk
    store equals the in-memory 1-device trial bit for bit (every outcome, SAFE, WHY, SCHEDULE, POLICY)."""
    one, many = eight["trial1"], eight["trial8"]
    assert len(one) == TRIAL["n"] and list(one["ID"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(one, many, check_exact=True)
    recs = [r for r in eight["trial8_records"] if not r["name"].startswith("optimizer")]
    for r in recs:
        _sharded_over_8(r, r["rows"])
    # per chunk: C0, C1 and the proposals simulated exactly on 2 patients x 2 draws = 4 rows (padded to 16)
    assert sum(r["rows"] == 4 for r in recs) >= 3 * 2
    # the relaxed stages too: cross-entropy and rounding scores (2 patients x 2 candidates = 4 groups of 2 draws)
    # and the projected-Adam iterate (2 patients), split over the 8 devices (padded to 8 groups, one per device)
    opt = [r for r in eight["trial8_records"] if r["name"].startswith("optimizer")]
    names = {r["name"] for r in opt}
    assert names == {"optimizer: cross-entropy scores", "optimizer: gradient steps", "optimizer: rounding scores"}
    for r in opt:
        assert r["devices"] == 8 and r["padded_rows"] == 8 and r["rows"] == (2 if "gradient" in r["name"] else 4)
        for side in ("input", "output"):
            shards = r[side]["shards"]
            assert sorted(d for d, _ in shards) == list(range(8)) and all(sh[0] == 1 for _, sh in shards), (r, side)


def test_laplace_subjects_sharded_over_8_devices(runs):
    """Laplace fit of 10 subjects sharded over 8 devices (2, 2, 1, ... subjects per device): conditional modes and
    their Hessians equal the 1-device ones to 1e-15 (the same per-subject computation; XLA may order a few
    flops differently for another batch size), -2 log L and its gradient to 1e-13 relative, the fitted
    parameters to 1e-12 and the covariance (central differences of the gradient: rounding / 1e-4 step) to 1e-9
    relative."""
    _ok(runs["jobs"]["fit"])
    res = pickle.load(open(runs["work"] / "fit.pkl", "rb"))
    (e1, H1, ok1, v1, g1), (e8, H8, ok8, v8, g8) = res["one"], res["eight"]
    assert ok1.all() and np.array_equal(ok1, ok8)
    np.testing.assert_allclose(e8, e1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(H8, H1, rtol=1e-13, atol=0)
    assert abs(v8 - v1) <= 1e-13 * abs(v1)
    np.testing.assert_allclose(g8, g1, rtol=0, atol=1e-13 * np.abs(g1).max())
    assert sorted(d for d, _ in res["shards"]) == list(range(8))
    (u1, m1, c1, _), (u8, m8, c8, _) = res["fit1"], res["fit8"]
    np.testing.assert_allclose(u8, u1, rtol=1e-12)
    assert abs(m8 - m1) <= 1e-12 * abs(m1)
    np.testing.assert_allclose(c8, c1, rtol=1e-9, atol=1e-9 * np.abs(c1).max())


def test_two_processes_run_one_trial(runs, eight):
    """Two processes on localhost (jax.distributed, coordinator 127.0.0.1 on a free port) share the trial's
    chunks (one each), write them to one store and merge: both return the single-process table, bit for bit."""
    for i in (0, 1):
        _ok(runs["jobs"][f"process{i}"])
    store = runs["work"] / "mp" / "store"
    writers = sorted(json.loads((store / f"chunk-{i:06d}.json").read_text())["info"]["process"] for i in range(2))
    assert writers == [0, 1]  # each process computed one of the two chunks
    for i in (0, 1):
        res = pickle.load(open(runs["work"] / "mp" / f"process{i}.pkl", "rb"))
        assert (res["index"], res["count"]) == (i, 2)
        pd.testing.assert_frame_equal(res["patients"], eight["trial1"], check_exact=True)


def test_killed_trial_resumes_without_losing_or_repeating_patients(runs, eight):
    """A trial process killed (SIGKILL) after its first chunk; resume=True computes only the missing chunk:
    the first chunk's files are untouched, the final table equals the uninterrupted one, every patient once."""
    assert runs["after_kill"] == ["chunk-000000.json"], runs["jobs"]["killed"].result()[1]
    _ok(runs["jobs"]["resume"])
    store = runs["work"] / "killed" / "store"
    assert {p.name: p.stat().st_mtime_ns for p in store.glob("chunk-000000*")} == runs["kept"]
    assert (store / "chunk-000001.json").exists()
    resumed = pickle.load(open(runs["work"] / "killed" / "resumed.pkl", "rb"))
    assert resumed["ID"].is_unique and list(resumed["ID"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(resumed, eight["trial1"], check_exact=True)
