"""Command-line interface of the pkpd toolkit.

Commands: ``pkpd simulate``, ``pkpd fit``, ``pkpd forecast``, ``pkpd optimize``, ``pkpd trial``, ``pkpd report``,
``pkpd drugs``, ``pkpd models``, ``pkpd devices``, ``pkpd version``.

A thin Typer layer: each command parses its options, calls one function of the package (the workflow:
:func:`pkpd.simulate.simulate_dataset`, :func:`pkpd.population.run.simulate_regimen_stored`,
:func:`pkpd.fit.api.fit`, :func:`pkpd.fit.forecast.forecast`, :func:`regimens.optimize.optimize_patient`,
:func:`regimens.optimize.run_trial`, :func:`pkpd.html_report.write_report`), writes the outputs it returns
through :func:`pkpd.interrupts.staged_outputs` with a run manifest, and prints. No science lives here. JAX
and the ``pkpd`` package are imported inside the commands so that ``pkpd --help`` stays fast.

* Options that several commands share are declared once, as ``Annotated`` aliases (:data:`Force`,
  :data:`Out`, :data:`Seed`, :data:`Precision`, :data:`Devices`...).
* One error boundary: every command runs inside :func:`_boundary` (applied by :class:`_App` to each command
  it registers). A :class:`pkpd.PKPDError` (every error a user can provoke with bad input) is printed to
  stderr as ``Error: <message>`` (no traceback) with exit code 1; Ctrl-C ends a long command with exit code
  130 and a one-line message (:mod:`pkpd.interrupts`).
* Commands that compute call :func:`pkpd.configure` at start-up with their ``--precision`` (:func:`_scaleout`).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, NoReturn, Optional

import typer

__all__ = ["app", "main"]

MAX_PLOTTED_SUBJECTS = 20


class _Abort(Exception):
    """A CLI-level usage problem (e.g. refusing to overwrite a file): message printed, exit code 1."""


def _stderr():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _console():
    """The console of a command's report on stdout (plain text: no highlighting, lines never cut)."""
    from rich.console import Console

    return Console(soft_wrap=True, highlight=False)


def _fail(message: str) -> NoReturn:
    """Print ``message`` to stderr as plain text (no markup interpretation) and exit with code 1."""
    _stderr().print(f"Error: {message}", markup=False, highlight=False, style="bold red")
    raise typer.Exit(code=1)


def _user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error the user caused (a :class:`pkpd.PKPDError` or a :class:`_Abort`), told
    without importing ``pkpd`` (a PKPDError exists only once ``pkpd.errors`` was imported)."""
    errors = sys.modules.get("pkpd.errors")
    return isinstance(exc, _Abort) or (errors is not None and isinstance(exc, errors.PKPDError))


@contextlib.contextmanager
def _interruptible(kept: str = "") -> Iterator[None]:
    """Run a long command body under :func:`pkpd.interrupts.interrupt_guard`: Ctrl-C (SIGINT), even one that
    a callback swallowed, ends the command with exit code 130 and a one-line message. The body writes its
    final outputs through :func:`_staged_outputs`, so an interrupt before they are all complete leaves none of
    them (and an earlier run's files as they were); one that arrives while they are moved into place takes
    effect once they all are, and the message says they are kept. ``kept`` says what an interrupted run
    leaves behind otherwise (e.g. its resumable chunks)."""
    from pkpd.interrupts import INTERRUPT_EXIT_CODE, committed_outputs, interrupt_guard

    try:
        with interrupt_guard():
            yield
    except KeyboardInterrupt:
        done = committed_outputs()
        if done:
            where = sorted({str(p.parent) for p in done})
            text = f"Interrupted (Ctrl-C) after the run's outputs were complete: they are kept in {', '.join(where)}."
        else:
            text = (
                "Interrupted (Ctrl-C): the run stopped; it keeps no outputs (none were written; files already "
                "there are unchanged)." + kept
            )
        _stderr().print(text, markup=False, highlight=False, style="bold red")
        raise typer.Exit(code=INTERRUPT_EXIT_CODE) from None


def _boundary(fn: Callable[..., Any], *, interruptible: bool) -> Callable[..., Any]:
    """The error boundary of a command: a user error (:func:`_user_error`) raised anywhere in ``fn`` is printed
    by :func:`_fail` (stderr, ``Error: <message>``, exit code 1, no traceback); with ``interruptible`` the
    whole body runs under :func:`_interruptible` (Ctrl-C: exit code 130 and a message). Other exceptions
    (a bug) keep their traceback."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        with _interruptible() if interruptible else contextlib.nullcontext():
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if _user_error(exc):
                    _fail(str(exc))
                raise

    return command


class _App(typer.Typer):
    """A Typer application whose every command runs inside :func:`_boundary`. ``quick=True``: a command that
    writes nothing and returns at once (listings, ``version``, ``devices``), run without the interrupt guard
    (Ctrl-C there: Typer's own handling, exit code 130 without a message)."""

    def command(self, *args: Any, quick: bool = False, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(_boundary(fn, interruptible=not quick))
            return fn

        return decorator


app = _App(
    help=(
        "JAX PK/PD simulation of NONMEM-format datasets with NONMEM-exact dosing events.\n\n"
        "Units: TIME and II in h, AMT in mg, RATE in mg/h, concentrations (CP, CE, CM) in mg/L. "
        "Run `pkpd simulate --help` for the dataset, parameter-file and output formats."
    ),
    no_args_is_help=True,
    add_completion=False,
)


# ----------------------------------------------------------------------------------------------------------
# options shared by several commands: each declared once
# ----------------------------------------------------------------------------------------------------------
_IGNORE_HELP = (
    "NONMEM IGNORE: a character tested on the first column (# always; @ = header lines; C) or "
    "conditions such as '(DV.EQ.0,TIME.GT.24)' (.EQ. .NE. .GT. .GE. .LT. .LE.; comma = or). "
    "Repeatable. Rows with C in a column named C are always ignored."
)
_ACCEPT_HELP = (
    "NONMEM ACCEPT conditions, e.g. '(DVID.EQ.1)', or '(ID.EQ.3)' to pick one patient of a file: only the rows "
    "where one holds are simulated, fitted or forecast. Repeatable."
)

Out = Annotated[
    Optional[Path],
    typer.Option(
        "--out", "-o", help="Output directory (a file for `simulate DATA` and `report`); its default is given above."
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        "-f",
        help="Overwrite the outputs of an earlier run (an existing output file, or the files of a non-empty output "
        "directory); the inputs are never overwritten.",
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        "-s",
        help="Random seed of the command's draws (population, variability, sampling, simulated replicates): the "
        "same seed gives the same results.",
    ),
]
Population = Annotated[
    int,
    typer.Option(
        "--population",
        "-n",
        min=1,
        help="SPINE-72 virtual patients (with simulate --patient: replicates of that patient, each with its own "
        "variability draw).",
    ),
]
Steps = Annotated[int, typer.Option("--steps", min=1, help="Gradient steps.")]
Ignore = Annotated[Optional[list[str]], typer.Option("--ignore", metavar="IGNORE", help=_IGNORE_HELP)]
Accept = Annotated[Optional[list[str]], typer.Option("--accept", metavar="CONDITIONS", help=_ACCEPT_HELP)]
Precision = Annotated[
    Optional[str],
    typer.Option(
        "--precision",
        help="float64, float32 or auto (float64 on CPU, float32 on accelerators); default: PKPD_PRECISION, else auto.",
    ),
]
Devices = Annotated[
    Optional[int],
    typer.Option(
        "--devices",
        min=1,
        help="Local devices to shard over (patients, draws or subjects); default: all that JAX sees (`pkpd "
        "devices`; on CPU XLA_FLAGS=--xla_force_host_platform_device_count=N gives N virtual devices).",
    ),
]
ChunkSize = Annotated[
    Optional[int],
    typer.Option(
        "--chunk-size",
        min=1,
        help="Rows (patients, or the optimizer's draws) per compiled batch; default: sized from the devices' free "
        "memory (CPU: 2,048).",
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted population run in the same --out: the chunks already in OUT/chunks are "
        "kept, only the missing ones are computed.",
    ),
]
KeepChunks = Annotated[
    bool,
    typer.Option(
        "--keep-chunks",
        help="Keep OUT/chunks after a successful population run (default: removed once the outputs and run.json "
        "are written; a failed or interrupted run always keeps them for --resume).",
    ),
]
Coordinator = Annotated[
    Optional[str],
    typer.Option("--coordinator", help="Multi-process run: host:port of process 0 (default: JAX_COORDINATOR_ADDRESS)."),
]
NumProcesses = Annotated[
    Optional[int],
    typer.Option("--num-processes", min=1, help="Multi-process run: number of processes (default: JAX_NUM_PROCESSES)."),
]
ProcessId = Annotated[
    Optional[int],
    typer.Option(
        "--process-id", min=0, help="Multi-process run: this process's id, 0 .. N-1 (default: JAX_PROCESS_ID)."
    ),
]


class SolverChoice(str, enum.Enum):
    auto = "auto"
    analytic = "analytic"
    ode = "ode"


class OdeMethodChoice(str, enum.Enum):
    auto = "auto"
    tsit5 = "tsit5"
    dopri5 = "dopri5"
    dopri8 = "dopri8"
    kvaerno5 = "kvaerno5"


class InterpolationChoice(str, enum.Enum):
    nocb = "nocb"
    locf = "locf"


class MethodChoice(str, enum.Enum):
    laplace = "laplace"
    nuts = "nuts"
    svi = "svi"


# ----------------------------------------------------------------------------------------------------------
# start-up, output checks, staged writing
# ----------------------------------------------------------------------------------------------------------
def _scaleout(
    devices: Optional[int] = None,
    chunk_size: Optional[int] = None,
    precision: Optional[str] = None,
    coordinator: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
) -> tuple[int, int]:
    """Start-up of a command that computes, in the order JAX needs: the multi-process runtime
    (:func:`pkpd.batch.init_distributed`, before anything touches JAX's devices), :func:`pkpd.configure` with
    the precision (--precision, else PKPD_PRECISION, else auto: float64 on CPU, float32 on accelerators, from
    the backend just started), then the devices and chunk size of :mod:`pkpd.batch` (checked against the
    devices present). Returns (process index, process count)."""
    import os

    prec = precision or os.environ.get("PKPD_PRECISION") or "auto"
    if "pkpd" not in sys.modules and prec in ("float32", "float64"):
        os.environ["PKPD_PRECISION"] = prec  # the first import of pkpd configures it already
    import pkpd
    from pkpd import batch

    index, count = batch.init_distributed(coordinator, num_processes, process_id)
    pkpd.configure(precision=prec)
    batch.configure(devices=devices, chunk_size=chunk_size)
    batch.local_devices()  # fails now, with the message, if too many devices were asked for
    return index, count


def _check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse an output path that is a file, or a non-empty directory without --force."""
    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"the output path {out_dir} is a file; give a directory with --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        _fail(
            f"the output directory {out_dir} exists and is not empty; pass --force to overwrite its files, "
            "or choose another --out"
        )


def _data_model_out(data: Path, what: str, model: Path, out: Optional[Path], suffix: str, force: bool) -> Path:
    """Check that DATA and --model are files and that --out may be written; return the output directory
    (default ``<DATA stem><suffix>`` in the working directory)."""
    if not data.is_file():
        _fail(f"{what} {data} does not exist or is not a file")
    if not model.is_file():
        _fail(f"the model file {model} does not exist or is not a file")
    out_dir = out if out is not None else Path.cwd() / f"{data.stem}{suffix}"
    _check_out_dir(out_dir, force)
    return out_dir


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _check_writable(path: Path, what: str, option: str, force: bool, data: Path) -> None:
    if _same_file(path, data):
        raise _Abort(
            f"the {what} {path} is the input dataset; choose another {option} (the input is never overwritten)"
        )
    if path.exists() and path.is_dir():
        raise _Abort(f"the {what} {path} is a directory; give a file name with {option}")
    if path.exists() and not force:
        raise _Abort(f"the {what} {path} already exists; pass --force to overwrite it, or choose another {option}")
    if not path.parent.is_dir():
        raise _Abort(f"cannot write the {what} {path}: directory {path.parent} does not exist")


def _staged_outputs():
    """Where every command writes its final outputs (:func:`pkpd.interrupts.staged_outputs`): right before
    writing, raise KeyboardInterrupt if SIGINT arrived during the run (even if it was swallowed); the files go
    to a staging directory (``stage.dir(out_dir)``, ``stage.path(file)``) and are moved into place together
    when the block completes. An interrupt or error before that leaves the output directory as it was (an
    earlier run's files untouched, also with --force) and removes the staged files."""
    from pkpd.interrupts import staged_outputs

    return staged_outputs()


@contextlib.contextmanager
def _writing(what: Optional[str] = None) -> Iterator[None]:
    """An :class:`OSError` in the block (a file that cannot be written, or the staged outputs that cannot be
    moved into place: :class:`pkpd.interrupts.CommitError`) ends the command by :func:`_fail` with
    ``cannot write <what>: <error>`` (``what`` None: the error's own message)."""
    try:
        yield
    except OSError as exc:
        _fail(f"cannot write {what}: {exc}" if what else str(exc))


def _manifest(path: Path, command: str, args: dict, inputs: dict, outputs, stage) -> None:
    """Write the run manifest (command, arguments, inputs with SHA-256, versions: :mod:`pkpd.manifest`),
    staged like the outputs it lists (``stage`` of :func:`_staged_outputs`, which moves it into place last);
    ``outputs`` may be staged or final paths."""
    from pkpd.manifest import write_manifest

    try:
        write_manifest(
            stage.path(path), command, args, inputs=inputs, outputs=stage.finals(outputs), relative_to=path.parent
        )
    except OSError as exc:
        _fail(f"cannot write the run manifest {path}: {exc}")


def _given(*options: tuple[str, Any]) -> str:
    """The names of the ``(name, value)`` options that were given (a value other than None, False or an empty
    list), comma-separated."""
    return ", ".join(name for name, value in options if value is not None and value is not False and value != [])


def _value(choice: Optional[enum.Enum]) -> Optional[str]:
    return None if choice is None else str(choice.value)


# ----------------------------------------------------------------------------------------------------------
# population runs: progress, processes, chunks
# ----------------------------------------------------------------------------------------------------------
def _progress(console):
    """The progress bar of a population run (description, bar, patients done of all, time elapsed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _chunks_kept(out_dir: Path) -> str:
    """What an interrupted population run leaves behind (the end of the interrupt message)."""
    return f" The finished chunks are kept in {out_dir / 'chunks'}: rerun with --resume to continue."


def _writes_outputs(index: int, count: int, out_dir: Path, console) -> bool:
    """After a population run's chunks are merged: wait until every process has read them (process 0 may
    delete them later); True on process 0, which writes the outputs, else say so and return False."""
    from pkpd.batch import barrier

    barrier("pkpd-chunks-merged")
    if index != 0:
        console.print(
            f"process {index} of {count}: its chunks are in {out_dir / 'chunks'}; process 0 writes the outputs",
            markup=False,
        )
        return False
    return True


def _remove_chunks(out_dir: Path, keep: bool, console) -> None:
    """After a successful population run (outputs and run.json written): delete OUT/chunks unless --keep-chunks
    (:func:`pkpd.batch.remove_store`). A failed or interrupted run never gets here, so its chunks stay for
    --resume."""
    from pkpd.batch import remove_store

    if keep:
        console.print(f"Kept the intermediate chunks in {out_dir / 'chunks'} (--keep-chunks)", markup=False)
        return
    try:
        freed = remove_store(out_dir / "chunks")
    except OSError as exc:
        console.print(
            f"warning: could not remove the intermediate chunks in {out_dir / 'chunks'}: {exc}",
            markup=False,
            style="yellow",
        )
        return
    if freed:
        console.print(
            f"Removed the intermediate chunks ({freed / 1e6:.1f} MB) from {out_dir / 'chunks'} "
            "(--keep-chunks keeps them)",
            markup=False,
        )


# ----------------------------------------------------------------------------------------------------------
# pkpd simulate
# ----------------------------------------------------------------------------------------------------------
SIMULATE_HELP = """Simulate every record of a NONMEM-format dataset with a built-in model.

Reads DATA (CSV, one row per event record), evaluates the parameter file on every row, simulates each
subject with NONMEM (PREDPP) event semantics and writes every input row and column, in the input order,
followed by the model's outputs, to OUT (CSV).

\b
DATASET COLUMNS (NONMEM conventions; ID and TIME required, others optional):
  ID     subject identifier
  TIME   time in h (non-decreasing within an ID, except after a reset EVID 3/4)
  EVID   0 observation, 1 dose, 2 other, 3 reset, 4 reset and dose
  AMT    dose amount in mg
  CMT    compartment number of the dose (see `pkpd models NAME` for the numbering)
  RATE   infusion rate in mg/h; 0 = bolus; RATE=-1: rate modeled by R<n> (mg/h);
         RATE=-2: duration modeled by D<n> (h)
  II     dosing interval in h (ADDL additional doses, SS steady state)
  ADDL, SS, DV, MDV  as in NONMEM; "." means 0 in standard columns
  any other column is a covariate usable in the parameter expressions; time-varying covariates
  are interpolated NOCB (next observation carried backward, NONMEM's default) unless
  --interpolation locf.
  C      NONMEM comment flag, never a covariate: rows with C in it are ignored (and rows
         whose first column starts with #); --ignore/--accept: $DATA IGNORE/ACCEPT.

\b
PARAMETER FILE (TOML, or JSON with the same keys):
  model = "1cmt_oral"            # optional; --model wins
  interpolation = "nocb"         # optional: nocb (default) or locf
  \\[parameters]
  CL = "1.1*(WT/70)**0.75"       # L/h; constant or expression of dataset columns
  V = 20                         # L
  KA = 1.5                       # 1/h
  F2 = "BIOAV"                   # bioavailability of doses into CMT 2 (default 1)
  ALAG2 = 0.5                    # lag time (h) of doses into CMT 2 (default 0)
  R2 = 10                        # modeled rate (mg/h) for RATE=-1 doses into CMT 2
  D2 = "DUR2 if MODE == 2 else 1"  # modeled duration (h) for RATE=-2 doses into CMT 2
F<n>, ALAG<n>, R<n>, D<n> exist for every compartment n of the model.

\b
OUTPUT COLUMNS (appended after the input columns):
  one column per compartment, named after it (DEPOT, CENTRAL, PERIPH, ...): amount in mg
      (EFFECT holds the effect-site concentration in mg/L);
  CP  = central amount / central volume, in mg/L (= ug/mL; multiply by 1000 for ng/mL);
  CE  effect-site concentration (mg/L), for models with an effect compartment;
  CM  metabolite concentration (mg/L), for models with a metabolite.
On dose records the values include that record's own (unlagged) dose.
With --grid, one row per ID and grid time (EVID 2, MDV 1, GRID 1) is added after the records of
the same time; the dataset's rows (GRID 0) are all kept.

OUT: the output CSV (default <DATA stem>_sim.csv; with --regimen, the output directory,
default <regimen>_sim). Dataset mode only: --params, --model, --solver, --ode-method, --interpolation,
--grid, --plot, --ignore, --accept. Regimen mode only (--regimen, a virtual population): --population,
--seed, --patient, --format, --resume, --keep-chunks, --devices, --chunk-size and the multi-process
options. Refuses to overwrite an existing OUT or PLOT unless --force; never overwrites DATA.
"""


@app.command(help=SIMULATE_HELP)
def simulate(
    data: Optional[Path] = typer.Argument(
        None,
        metavar="[DATA]",
        exists=True,
        dir_okay=False,
        readable=True,
        help="NONMEM-format dataset (CSV). Omit it with --regimen.",
        show_default=False,
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Built-in model name (see `pkpd models`); optional when the parameter file sets `model = ...`.",
    ),
    params: Optional[Path] = typer.Option(
        None,
        "--params",
        "-p",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Parameter file (.toml or .json) with a \\[parameters] table (dataset mode).",
        show_default=False,
    ),
    out: Out = None,
    regimen: Optional[str] = typer.Option(
        None,
        "--regimen",
        "-r",
        help="Regimen mode: a regimen file (.toml, or .txt in the text form) "
        "or a shipped name (C0, C1, IYER_PLACEBO...).",
    ),
    population: Population = 1000,
    seed: Seed = 0,
    patient: Optional[Path] = typer.Option(
        None,
        "--patient",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Regimen mode: simulate this patient (TOML) instead of the SPINE-72 population.",
    ),
    fmt: str = typer.Option("csv", "--format", help="Regimen mode: per-patient table format, csv or parquet."),
    solver: Optional[SolverChoice] = typer.Option(
        None,
        "--solver",
        case_sensitive=False,
        help="auto: exact matrix-exponential solution for linear models (subjects failing its accuracy check "
        "are re-solved with a stiff ODE solver), ODE otherwise; analytic (linear models only; refuses "
        "instead of falling back); ode. Default: the parameter file's `solver`, else auto.",
    ),
    ode_method: Optional[OdeMethodChoice] = typer.Option(
        None,
        "--ode-method",
        case_sensitive=False,
        help="ODE method: auto (Tsit5, retried with the stiff Kvaerno5 where it fails), tsit5, dopri5, dopri8 "
        "or kvaerno5 (implicit, for stiff models). Default: the parameter file's `ode_method`, else auto.",
    ),
    interpolation: Optional[InterpolationChoice] = typer.Option(
        None,
        "--interpolation",
        case_sensitive=False,
        help="Covariate interpolation between records: nocb (NONMEM) or locf. Default: the parameter file's "
        "`interpolation`, else nocb.",
    ),
    plot: Optional[Path] = typer.Option(
        None,
        "--plot",
        dir_okay=False,
        help=f"Also write a PNG of CP (mg/L) vs TIME (h): one line per ID on the "
        f"--grid (default: a dense grid over the records), a legend naming "
        f"the IDs (first {MAX_PLOTTED_SUBJECTS} subjects).",
    ),
    grid: Optional[str] = typer.Option(
        None,
        "--grid",
        metavar="START:END:STEP",
        help="Dataset mode: also output every ID at these times, in the dataset's "
        "time unit (h): from START to END (included) by STEP, written "
        "e.g. 0:24:0.5 for 0, 0.5, ..., 24; or a list 0,1,2,4. Grid rows (EVID 2, MDV 1) are added to the dataset's "
        "records, marked GRID=1.",
    ),
    ignore: Ignore = None,
    accept: Accept = None,
    keep_chunks: KeepChunks = False,
    force: Force = False,
    devices: Devices = None,
    chunk_size: ChunkSize = None,
    precision: Precision = None,
    resume: Resume = False,
    coordinator: Coordinator = None,
    num_processes: NumProcesses = None,
    process_id: ProcessId = None,
) -> None:
    args = dict(locals())
    if regimen is not None:
        if data is not None or params is not None or model is not None:
            _fail(
                "--regimen simulates a regimen in a virtual population: do not also give DATA, --params or "
                "--model (those are for dataset mode)"
            )
        dataset_only = _given(
            ("--solver", solver),
            ("--ode-method", ode_method),
            ("--interpolation", interpolation),
            ("--plot", plot),
            ("--grid", grid),
            ("--ignore", ignore),
            ("--accept", accept),
        )
        if dataset_only:  # the regimen simulator has its own exact solver: say so rather than ignore the option
            _fail(
                f"{dataset_only} apply to dataset mode (DATA --params), not to --regimen runs (the "
                "regimen simulator uses its own exact event solver)"
            )
        scale = _scaleout(devices, chunk_size, precision, coordinator, num_processes, process_id)
        _simulate_regimen(regimen, population, seed, patient, out, fmt, force, args, resume, scale, keep_chunks)
        return
    population_only = _given(
        ("--devices", devices),
        ("--chunk-size", chunk_size),
        ("--resume", resume),
        ("--keep-chunks", keep_chunks),
        ("--coordinator", coordinator),
        ("--num-processes", num_processes),
        ("--process-id", process_id),
    )
    if population_only:
        _fail(f"{population_only} apply to population runs (--regimen), not to dataset mode")
    _scaleout(precision=precision)
    if data is None or params is None:
        _fail("give DATA and --params (dataset mode) or --regimen (population mode); see `pkpd simulate --help`")
    regimen_only = ("regimen", "population", "seed", "patient", "fmt", "keep_chunks")
    options = dict(
        model=model,
        solver=_value(solver),
        ode_method=_value(ode_method),
        interpolation=_value(interpolation),
        grid=grid,
        ignore=ignore,
        accept=accept,
    )
    _simulate_dataset(data, params, out, plot, force, {k: v for k, v in args.items() if k not in regimen_only}, options)


def _simulate_dataset(
    data: Path, params: Path, out: Optional[Path], plot: Optional[Path], force: bool, args: dict, options: dict
) -> None:
    """``pkpd simulate DATA --params FILE``: check --out and --plot, run :func:`pkpd.simulate.simulate_dataset`
    with ``options``, write the CSV, the plot and the manifest together, print what was simulated."""
    out_path = out if out is not None else Path.cwd() / f"{data.stem}_sim.csv"
    _check_writable(out_path, "output file", "--out", force, data)
    if plot is not None:
        if _same_file(plot, out_path):
            raise _Abort("--plot and --out name the same file")
        _check_writable(plot, "plot file", "--plot", force, data)
    from pkpd.manifest import manifest_path
    from pkpd.simulate import simulate_dataset

    run = simulate_dataset(data, params, plot=plot is not None, **options)
    with _writing(), _staged_outputs() as stage:  # the CSV, the plot and the manifest appear together or not at all
        with _writing(f"the output file {out_path}"):
            run.write_csv(stage.path(out_path))
        if plot is not None:
            with _writing(f"the plot file {plot}"):
                shown, total = run.plot(stage.path(plot), max_ids=MAX_PLOTTED_SUBJECTS)
        outputs = [out_path] + ([plot] if plot is not None else [])
        _manifest(manifest_path(out_path), "simulate", args, {"data": data, "params": params}, outputs, stage)
    console = _console()
    for note in run.notes:
        console.print(f"note: {note}", markup=False)
    console.print(f"{run.summary()} -> {out_path}", markup=False)
    if plot is not None:
        more = f" (first {shown} of {total} subjects)" if shown < total else ""
        console.print(f"Plot of CP vs TIME -> {plot}{more}", markup=False)


def _load_regimen(spec: str):
    from regimens import get_regimen, list_regimens, load_regimen, parse_regimen_text

    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() == ".toml":
            return load_regimen(path)
        return parse_regimen_text(path.read_text(), name=path.stem)
    if spec.upper() in [r.upper() for r in list_regimens()]:
        return get_regimen(spec)
    raise _Abort(f"regimen {spec!r} is neither a file nor a shipped regimen ({', '.join(list_regimens())})")


def _simulate_regimen(
    spec: str,
    n: int,
    seed: int,
    patient: Optional[Path],
    out: Optional[Path],
    fmt: str,
    force: bool,
    args: dict,
    resume: bool,
    scale: tuple[int, int],
    keep_chunks: bool,
) -> None:
    """``pkpd simulate --regimen``: check the regimen, --out and --format, then run the simulation with its
    own interrupt message (the finished chunks are kept for --resume)."""
    index, count = scale
    if fmt not in ("csv", "parquet"):
        _fail(f"--format must be csv or parquet, got {fmt!r}")
    reg = _load_regimen(spec)
    out_dir = out if out is not None else Path.cwd() / f"{reg.name}_sim"
    if out_dir.exists() and not out_dir.is_dir():
        raise _Abort(f"the output path {out_dir} is a file; give a directory with --out")
    if index == 0 and resume and not force:  # only a run this command recognises is resumed
        from pkpd.batch import check_resume_dir
        from pkpd.population.run import STORE_KIND

        check_resume_dir(out_dir, STORE_KIND, "simulate")
    elif index == 0 and out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise _Abort(
            f"the output directory {out_dir} exists and is not empty; pass --force to overwrite "
            "its files, --resume to continue an interrupted run, or choose another --out"
        )
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise _Abort(
                "--format parquet needs pyarrow (pip install -e '.[parquet]', or pip install pyarrow); use --format csv"
            ) from None
    with _interruptible(_chunks_kept(out_dir)):
        _simulate_regimen_run(reg, spec, n, seed, patient, out_dir, fmt, args, resume, index, count, keep_chunks)


def _population(n: int, seed: int, patient: Optional[Path]):
    """The virtual population of ``pkpd simulate --regimen`` and how to name it: ``n`` SPINE-72 patients
    (``seed``), or ``n`` replicates of the --patient file."""
    from pkpd.patients import load_patient, patients_to_frame, spine72_population

    if patient is None:
        return spine72_population(n, seed), f"{n} SPINE-72 virtual patients (seed {seed})"
    pop = patients_to_frame([load_patient(patient)] * n)
    pop["ID"] = range(1, n + 1)
    return pop, f"{n} replicate(s) of patient {patient.name}"


def _simulate_regimen_run(
    reg,
    spec: str,
    n: int,
    seed: int,
    patient: Optional[Path],
    out_dir: Path,
    fmt: str,
    args: dict,
    resume: bool,
    index: int,
    count: int,
    keep_chunks: bool,
) -> None:
    from pkpd.population.report import population_headline, write_population_outputs
    from pkpd.population.run import simulate_regimen_stored
    from regimens.io import regimen_file
    from regimens.population_checks import regimen_findings

    console = _console()
    with _writing("the outputs"):
        pop, who = _population(n, seed, patient)
        findings = regimen_findings(reg, pop)
        for _, row in findings.iterrows():
            style = "bold red" if row["severity"] == "error" else "yellow"
            console.print(
                f"{row['severity'].upper()}: {row['message']} [{row['patients']} patient(s)]", style=style, markup=False
            )
        console.print(f"Simulating regimen {reg.name} in {who}, 72 h ...", markup=False)
        with _progress(console) as prog:
            task = prog.add_task("patients", total=n)
            # chunk by chunk into OUT/chunks (resumable; each process takes its share): pkpd.population.run
            res = simulate_regimen_stored(
                reg, pop, out_dir / "chunks", seed=seed, resume=resume, progress=lambda k: prog.advance(task, k)
            )
        if not _writes_outputs(index, count, out_dir, console):
            return
        with _staged_outputs() as stage:  # the tables, figures and run.json appear together or not at all
            written = write_population_outputs(res, stage.dir(out_dir), findings=findings, fmt=fmt)
            inputs = {"regimen": regimen_file(spec) or spec, "patient": patient}
            inputs |= {f"structure {drug}": Path(file) for drug, file in reg.structures}  # the regimen's model files
            _manifest(out_dir / "run.json", "simulate", args, inputs, written, stage)
        written = stage.finals(written)
    _remove_chunks(out_dir, keep_chunks, console)
    for note in res.notes:
        console.print(f"note: {note}", markup=False)
    console.print(population_headline(res), markup=False)
    console.print("Wrote " + ", ".join(str(p) for p in written), markup=False)


# ----------------------------------------------------------------------------------------------------------
# pkpd fit, pkpd forecast
# ----------------------------------------------------------------------------------------------------------
FIT_HELP = """Fit a population model to a NONMEM-format dataset; write tables, model file, figures.

Reads DATA (CSV: ID, TIME, DV, MDV, EVID, AMT, CMT...; DVID for several
observation types, BLQ/LLOQ for censored values, OCC for inter-occasion
variability, and the covariate columns the model uses) and MODEL (TOML:
structure, parameters with initial estimates, IIV, covariates, residual error;
see examples/models/theoph.toml).

\b
METHODS:
  laplace  maximum likelihood (Laplace, FOCE-class with interaction), SEs
  nuts     Bayesian posterior, NUTS sampling (--chains, --warmup, --samples)
  svi      Bayesian, variational inference (--svi-steps, --samples)

\b
OUTPUT DIRECTORY (--out, default <DATA stem>_fit):
  parameters.csv   estimate, SE or posterior SD, RSE %, 95 % CI, IIV CV %,
                   shrinkage (R-hat, ESS for nuts)
  objective.json   -2LL (all constants), OFV (NONMEM, without N log 2pi),
                   AIC, BIC; WAIC for nuts/svi
  individual.csv   random effects and individual parameters per subject
  predictions.csv  PRED, IPRED, IWRES, CWRES, NPDE per observation
  nca.csv          NCA of the observed data (AUC, Cmax, Tmax, half-life...)
  model.toml       the model with the final estimates as initial values
  fit.json         method, options, versions, timings, messages
  gof.png, residuals.png, qq.png, abs_iwres.png, vpc.png, pcvpc.png
  (--vpc-stratify), individual.png, eta*.png;
  trace.png, rank.png and idata.nc (ArviZ) for nuts/svi
Rows flagged C in a column named C are not fitted; --ignore/--accept select
records as NONMEM's $DATA IGNORE/ACCEPT (the note says which rows were left out).
An existing non-empty output directory is not overwritten without --force.
A fit that did not converge (laplace: largest gradient of -2LL above 0.01 on
the estimation scale, or a subject's conditional mode not converged; nuts:
R-hat > 1.01 or divergences) still writes its outputs, marked
"converged": false, and exits with code 2 unless --allow-nonconvergence.
"""


@app.command("fit", help=FIT_HELP)
def fit_command(
    data: Path = typer.Argument(..., metavar="DATA", help="NONMEM-format dataset (CSV).", show_default=False),
    model: Path = typer.Option(..., "--model", "-m", help="Population model file (TOML).", show_default=False),
    method: MethodChoice = typer.Option(
        MethodChoice.laplace,
        "--method",
        case_sensitive=False,
        help="laplace (maximum likelihood), nuts or svi (Bayesian).",
    ),
    out: Out = None,
    force: Force = False,
    chains: int = typer.Option(4, "--chains", min=1, help="nuts: number of chains."),
    warmup: int = typer.Option(1000, "--warmup", min=1, help="nuts: warm-up iterations per chain."),
    samples: int = typer.Option(
        1000, "--samples", min=1, help="nuts: posterior draws per chain; svi: draws of the fitted approximation."
    ),
    svi_steps: int = typer.Option(2000, "--svi-steps", min=1, help="svi: optimization steps."),
    seed: Seed = 0,
    vpc_replicates: int = typer.Option(200, "--vpc-replicates", min=2, help="Simulated datasets of the VPC."),
    vpc_stratify: Optional[str] = typer.Option(
        None,
        "--vpc-stratify",
        metavar="COLUMN",
        help="Dataset column stratifying the prediction-corrected VPC "
        "(pcvpc.png, pcvpc.csv): one row of panels per value (more "
        "than 6 values: split at the median).",
    ),
    ignore: Ignore = None,
    accept: Accept = None,
    npde_replicates: int = typer.Option(1000, "--npde-replicates", min=2, help="Simulated datasets of the NPDE."),
    solver: SolverChoice = typer.Option(
        SolverChoice.auto,
        "--solver",
        case_sensitive=False,
        help="auto (exact for linear models, ODE otherwise), analytic or ode.",
    ),
    log_gof: bool = typer.Option(False, "--log-gof", help="Log axes in gof.png."),
    devices: Devices = None,
    precision: Precision = None,
    allow_nonconvergence: bool = typer.Option(
        False,
        "--allow-nonconvergence",
        help="Exit 0 when the fit did not converge (default: exit 2; the "
        "outputs are written either way, marked not converged).",
    ),
) -> None:
    args = dict(locals())
    out_dir = _data_model_out(data, "the dataset", model, out, "_fit", force)
    _scaleout(devices, None, precision)
    from pkpd.fit.api import fit as run_fit

    err = _stderr()
    opts = dict(
        chains=chains,
        warmup=warmup,
        samples=samples,
        svi_steps=svi_steps,
        seed=seed,
        vpc_replicates=vpc_replicates,
        npde_replicates=npde_replicates,
        solver=solver.value,
        vpc_stratify=vpc_stratify,
        ignore=ignore or None,
        accept=accept or None,
    )
    with _writing(f"the outputs to {out_dir}"), _fit_progress(method.value, err) as (hooks, show):
        res = run_fit(data, model, method.value, **hooks, **opts)
        with _staged_outputs() as stage:  # every output and run.json appear together or not at all
            show("writing the output directory")
            written = res.save(stage.dir(out_dir), force=True, log_axes=log_gof)
            _manifest(out_dir / "run.json", "fit", args, {"data": data, "model": model}, written, stage)
        written = stage.finals(written)
    console = _console()
    console.print(res.summary_text(), markup=False)
    console.print(
        f"Wrote {len(written)} files to {out_dir} (fit and diagnostics took {res.times.get('total_s', 0):.1f} s)",
        markup=False,
    )
    if not res.converged:
        why = res.message.removeprefix("not converged: ")
        if allow_nonconvergence:
            console.print(
                f"warning: the fit did not converge ({why}); outputs marked not converged (--allow-nonconvergence)",
                markup=False,
                style="yellow",
            )
        else:
            err.print(
                f"Error: the fit did not converge: {why}. The outputs in {out_dir} are marked "
                '"converged": false (fit.json, objective.json); pass --allow-nonconvergence to accept them '
                "with exit code 0",
                markup=False,
                highlight=False,
                style="bold red",
            )
            raise typer.Exit(code=2)


@contextlib.contextmanager
def _fit_progress(method: str, err) -> Iterator[tuple[dict, Callable[[str], None]]]:
    """The progress of a fit on stderr. laplace: a transient spinner with the stage, iteration and -2LL; nuts
    and svi: the sampler's own progress bar, and the stages as plain lines. Yields the progress arguments of
    :func:`pkpd.fit.api.fit` and a function that shows a stage of the command's own."""
    if method != "laplace":

        def say(text: str) -> None:
            err.print(f"{text} ...", markup=False, highlight=False)

        yield {"progress": True, "status": say}, say
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True
    ) as prog:
        task = prog.add_task("starting", total=None)

        def status(text: str) -> None:
            prog.update(task, description=text)

        def iteration(k: int, value: float) -> None:
            prog.update(task, description=f"estimating (laplace): iteration {k}, -2LL {value:.4f}")

        yield {"callback": iteration, "status": status}, status


FORECAST_HELP = """Forecast one patient from a population model and the patient's own records (MIPD).

Reads MODEL (TOML with the population estimates, e.g. the model.toml that
`pkpd fit` writes) and DATA (the patient's NONMEM-format rows: doses,
covariates the model uses, and any concentrations or pain scores; DVID for
several observation types). Computes the MAP estimate of the patient's
parameters and their posterior (importance sampling around the Laplace
approximation), and predictions with 90 % intervals on a time grid.

\b
OUTPUT DIRECTORY (--out, default <DATA stem>_forecast):
  parameters.csv    MAP, median, 5 % and 95 % of each individual parameter
  draws.csv         posterior draws of the individual parameters
  predictions.csv   TIME, output, MAP, median, 5 %, 95 %
  observations.csv  the patient's observations
  forecast.png      observations and predicted bands
"""


@app.command("forecast", help=FORECAST_HELP)
def forecast_command(
    data: Path = typer.Argument(..., metavar="DATA", help="One patient's records (CSV).", show_default=False),
    model: Path = typer.Option(
        ..., "--model", "-m", help="Population model with final estimates (TOML).", show_default=False
    ),
    out: Out = None,
    until: Optional[float] = typer.Option(
        None, "--until", min=0.0, help="End of the prediction grid (h); default 24 h after the last record."
    ),
    points: int = typer.Option(200, "--points", min=2, help="Points of the prediction grid."),
    draws: int = typer.Option(1000, "--draws", min=10, help="Posterior draws."),
    seed: Seed = 0,
    ignore: Ignore = None,
    accept: Accept = None,
    force: Force = False,
) -> None:
    out_dir = _data_model_out(data, "the patient data", model, out, "_forecast", force)
    import shutil

    import numpy as np

    from pkpd.fit.forecast import forecast

    times = None if until is None else np.linspace(0.0, until, points)
    with _writing(f"the outputs to {out_dir}"):
        with _stderr().status("forecasting (first run compiles the model: up to a minute)"):
            fc = forecast(
                model,
                data,
                times=times,
                n_points=points,
                n_draws=draws,
                seed=seed,
                ignore=ignore or None,
                accept=accept or None,
            )
            with _staged_outputs() as stage:  # the outputs appear together or not at all
                fc.save(stage.dir(out_dir), force=True)
                if not _same_file(model, out_dir / "model.toml"):  # the model travels with its posterior draws
                    shutil.copyfile(model, stage.path(out_dir / "model.toml"))
    console = _console()
    console.print(fc.summary_text(), markup=False)
    console.print(
        f"Wrote parameters.csv, draws.csv, predictions.csv, observations.csv, forecast.png, model.toml to {out_dir}",
        markup=False,
    )


# ----------------------------------------------------------------------------------------------------------
# pkpd drugs, pkpd models
# ----------------------------------------------------------------------------------------------------------
drugs_app = _App(
    help="The drug library: sourced PK parameters (value, unit, IIV, source, flags).", no_args_is_help=True
)
app.add_typer(drugs_app, name="drugs")


def _drug_lines(d) -> list[str]:
    """What `pkpd drugs show` prints for drug ``d``: parameters with sources, PD values, label limits."""
    from pkpd.pd import PD_LIBRARY
    from regimens import limits_for

    lines = d.describe().splitlines()
    pd_ = PD_LIBRARY.get(d.name)
    if pd_ is not None:
        lines.append(f"analgesic PD ({pd_.kind}, driven by {pd_.output}):")
        for k, v in pd_.values().items():
            flag = "  UNVERIFIED" if v.is_unverified else ""
            lines.append(f"  {k:12s} {v.value:<10.4g} {v.unit:12s} {v.source}{flag}")
    lims = limits_for(d.name)
    if lims:
        lines.append("label limits:")
        lines += [f"  {lim.describe()}" for lim in lims]
    return lines


def _wide_console():
    """A rich console that never truncates to 80 columns when the output is a pipe or a log file."""
    from rich.console import Console

    return Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 400)


@drugs_app.command("list", quick=True)
def drugs_list() -> None:
    """List the drugs: class, structural model, routes, and how many lines of `pkpd drugs show NAME` (PK
    parameters, notes, PD values, label limits) are flagged UNVERIFIED."""
    from rich.table import Table
    from rich.text import Text

    from pkpd.drugs import get_drug, list_drugs
    from pkpd.pd import PD_LIBRARY

    table = Table(title="Drug library (`pkpd drugs show NAME` for parameters and sources)")
    for c in ("drug", "class", "model", "routes", "analgesic PD", "UNVERIFIED (lines of show)"):
        table.add_column(c, no_wrap=True)
    for name in list_drugs():
        d = get_drug(name)
        n_unv = sum("UNVERIFIED" in line for line in _drug_lines(d))
        table.add_row(
            Text(d.name),
            Text(d.drug_class),
            Text(d.model),
            Text(", ".join(d.routes)),
            Text(PD_LIBRARY[name].kind if name in PD_LIBRARY else "-"),
            Text(str(n_unv)),
        )
    _wide_console().print(table)


@drugs_app.command("show", quick=True)
def drugs_show(name: str = typer.Argument(..., help="Drug name (aliases such as paracetamol work).")) -> None:
    """Parameters with value, unit, IIV, covariates and source; PD values; label limits."""
    from pkpd.drugs import get_drug

    d = get_drug(name)
    console = _wide_console()
    for line in _drug_lines(d):
        console.print(line, markup=False)


@app.command(quick=True)
def models(
    name: Optional[str] = typer.Argument(
        None, help="Model name: print its compartments (CMT numbers), parameters with units and outputs."
    ),
) -> None:
    """List the built-in models, or describe one (compartments, parameters with units, outputs)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from pkpd.models import describe_model, get_model, list_models

    if name is not None:
        _console().print(describe_model(name), markup=False)
        return
    rows = [(m, get_model(m)) for m in list_models()]
    table = Table(title="Built-in models (the name grammar admits more combinations; see `pkpd models NAME`)")
    table.add_column("model", no_wrap=True)
    table.add_column("description")
    table.add_column("compartments (CMT=name)")
    for m, obj in rows:
        table.add_row(Text(m), Text(obj.description), Text(obj.compartment_table()))
    Console().print(table)


# ----------------------------------------------------------------------------------------------------------
# pkpd optimize, pkpd trial
# ----------------------------------------------------------------------------------------------------------
OPTIMIZE_HELP = """Propose a personalized opioid-sparing schedule for one patient (72 h after surgery).

Reads PATIENT (TOML: age, sex, weight, height, creatinine, hepatic impairment,
opioid tolerance, sleep apnea, CYP2D6/CYP2C9/OPRM1 genotypes; see
examples/patient_spine.toml). Chooses which products to use, their scheduled
doses (acetaminophen, gabapentin, one NSAID: ketorolac then celecoxib) and the
intra-operative ketamine and liposomal bupivacaine doses, at real strengths,
within every label maximum, renal/hepatic adjustment, fusion cap and CPIC rule
for the patient, and the as-needed oxycodone/hydromorphone rescue policy
(threshold, dose, interval). Objective: expected 72-h MME + pain above NRS 3
+ CVaR of MME + adjunct burden, over --draws scenario draws of the patient
(population prior, or the patient's forecast posterior with --posterior);
toxicity limits are chance constraints (P <= 1e-3). Compares with the C0 and
C1 comparators on the same draws.

\b
OUTPUT DIRECTORY (--out, default <PATIENT stem>_optimized):
  schedule.csv, regimen.toml, regimen.txt   the proposal (reusable with
                                            pkpd simulate --regimen)
  comparison.csv   proposal vs C0 and C1: 72-h MME mean and P90 (mg), time
                   with NRS <= 3, >= 4 and >= 7, pain AUC, OIRD and PONV
                   risk, LAST index
  explanation.txt  what the genotype and covariates changed, and why
  schedule.png, bands.png
"""


@app.command("optimize", help=OPTIMIZE_HELP)
def optimize_cmd(
    patient: Path = typer.Option(..., "--patient", "-p", help="Patient file (TOML).", show_default=False),
    out: Out = None,
    draws: int = typer.Option(
        128,
        "--draws",
        min=2,
        help="Scenario draws of the patient (the exact evaluation uses all; gradient steps use minibatches of 8).",
    ),
    steps: Steps = 30,
    seed: Seed = 0,
    posterior: Optional[Path] = typer.Option(
        None,
        "--posterior",
        help="A `pkpd forecast` output directory of this "
        "patient (draws.csv + model.toml with a [model] simulates table): its "
        "posterior replaces the population prior of the linked parameters.",
    ),
    min_tit: Optional[float] = typer.Option(
        None,
        "--min-time-in-target",
        min=0.0,
        max=1.0,
        help="Required mean fraction of 0-72 h with NRS <= 3 (e.g. 0.9).",
    ),
    products: Optional[str] = typer.Option(
        None,
        "--products",
        help="Comma-separated products the schedule may use "
        "(drug/route, e.g. acetaminophen/po,gabapentin/po); default: the standard "
        "multimodal set.",
    ),
    force: Force = False,
    devices: Devices = None,
    chunk_size: ChunkSize = None,
    precision: Precision = None,
) -> None:
    args = dict(locals())
    _scaleout(devices, chunk_size, precision)
    if not patient.is_file():
        _fail(f"the patient file {patient} does not exist or is not a file")
    out_dir = out if out is not None else Path.cwd() / f"{patient.stem}_optimized"
    _check_out_dir(out_dir, force)
    from pkpd.drugs.products import get_product
    from pkpd.patients import load_patient
    from regimens.optimize import OptimizeSettings, optimize_patient

    console = _console()
    extra = {"products": tuple(x.strip() for x in products.split(",") if x.strip())} if products else {}
    inputs: dict[str, Path | str] = {"patient": patient, **_comparator_inputs()}  # judged against C0 and C1
    if posterior is not None:
        inputs.update({"posterior draws": posterior / "draws.csv", "posterior model": posterior / "model.toml"})
    with _writing("the outputs"):
        pt = load_patient(patient)
        with console.status("optimizing ...") as status:
            for key in extra.get("products", ()):
                get_product(key)  # a clear error for an unknown product
            prop = optimize_patient(
                pt.to_row(),
                settings=OptimizeSettings(draws=draws, steps=steps, seed=seed, min_time_in_target=min_tit, **extra),
                progress=lambda text: status.update(f"optimizing: {text} ..."),
                posterior=posterior,
            )
        with _staged_outputs() as stage:  # the proposal's files and run.json appear together or not at all
            written = prop.save(stage.dir(out_dir), force=True)
            _manifest(out_dir / "run.json", "optimize", args, inputs, written, stage)
        written = stage.finals(written)
    console.print(
        f"Proposal for {patient.name} ({draws} {'posterior' if posterior else 'variability'} draws, same "
        "draws for C0 and C1):",
        markup=False,
    )
    if prop.fallback:
        console.print(
            "[bold yellow]FALLBACK:[/] no searched schedule met every constraint of the exact evaluation; "
            "this is C1's schedule (standard of care) within the patient's limits, not an optimized "
            "schedule (see 'why' below)."
        )
    if prop.worse_than_comparator:
        console.print(
            "[bold red]WORSE THAN C1:[/] the proposal uses more opioid and keeps pain in target for less "
            "time than C1 (adapted to the patient's limits where C1 as written is not allowed); see the "
            "first 'why' line."
        )
    console.print(prop.summary_text(), markup=False)
    console.print("Wrote " + ", ".join(str(p) for p in written), markup=False)


TRIAL_HELP = """The SPINE-72 virtual trial: optimize a schedule for every virtual patient, compare with C0 and C1.

Draws --population virtual patients (seed --seed; clinical.md 3.2), optimizes
each one's schedule over --draws variability draws (batched, --chunk patients
per call), simulates the proposals and both comparators exactly on the same
draws, and writes per-patient and summary tables with the results by CYP2D6
and CYP2C9 stratum.

\b
OUTPUT DIRECTORY (--out, default spine72_trial):
  patients.csv   one row per patient: covariates, outcomes of proposal/C0/C1,
                 SAFE (every hard check passed), WHY, SCHEDULE
  summary.csv    MME mean/P90, time in target, pain AUC, OIRD/PONV, LAST,
                 MME reduction vs C0 and C1 (%), overall and by stratum
  trial.png      72-h MME and time in target by regimen
  timings.json   seconds per stage
"""


@app.command("trial", help=TRIAL_HELP)
def trial_cmd(
    population: Population = 1000,
    seed: Seed = 1,
    out: Out = None,
    draws: int = typer.Option(128, "--draws", min=1, help="Variability draws per patient."),
    steps: Steps = 30,
    chunk: int = typer.Option(
        50, "--chunk", "--chunk-size", min=1, help="Patients per batched call (memory grows with chunk x draws)."
    ),
    force: Force = False,
    resume: Resume = False,
    keep_chunks: KeepChunks = False,
    devices: Devices = None,
    precision: Precision = None,
    coordinator: Coordinator = None,
    num_processes: NumProcesses = None,
    process_id: ProcessId = None,
) -> None:
    args = dict(locals())
    out_dir = out if out is not None else Path.cwd() / "spine72_trial"
    index, count = _scaleout(devices, None, precision, coordinator, num_processes, process_id)
    if index == 0:  # completed chunks go to OUT/chunks as they finish (--resume continues from them)
        if resume and not force:  # only a trial this command recognises is resumed
            from pkpd.batch import check_resume_dir
            from regimens.optimize import TRIAL_STORE_KIND

            check_resume_dir(out_dir, TRIAL_STORE_KIND, "trial")
        else:
            _check_out_dir(out_dir, force)
    with _interruptible(_chunks_kept(out_dir)):
        _trial_run(population, seed, out_dir, draws, steps, chunk, resume, index, count, args, keep_chunks)


def _comparator_inputs() -> dict[str, Path | str]:
    """The comparator regimens of ``pkpd optimize`` and ``pkpd trial`` as manifest inputs: ``"regimen C0"`` and
    ``"regimen C1"`` -> the shipped regimen file (``regimens/data/C0.toml``), recorded with its SHA-256 like
    ``simulate --regimen C1``'s."""
    from regimens.io import regimen_file

    return {f"regimen {name}": regimen_file(name) or name for name in ("C0", "C1")}


def _trial_run(
    population: int,
    seed: int,
    out_dir: Path,
    draws: int,
    steps: int,
    chunk: int,
    resume: bool,
    index: int,
    count: int,
    args: dict,
    keep_chunks: bool,
) -> None:
    from regimens.optimize import OptimizeSettings, run_trial, save_trial, trial_summary_text

    console = _console()
    with _writing("the outputs"):
        with _progress(console) as prog:
            task = prog.add_task("patients", total=population)

            def tick(done: int, stage: str) -> None:
                prog.update(task, completed=done, description=f"patients ({stage})")

            patients, summary, times = run_trial(
                population,
                seed,
                OptimizeSettings(draws=draws, steps=steps),
                chunk=chunk,
                progress=tick,
                store=out_dir / "chunks",
                resume=resume,
            )
        if not _writes_outputs(index, count, out_dir, console):
            return
        with _staged_outputs() as stage:  # the tables, figure and run.json appear together or not at all
            written = save_trial(patients, summary, times, stage.dir(out_dir))
            _manifest(out_dir / "run.json", "trial", args, _comparator_inputs(), written, stage)
    _remove_chunks(out_dir, keep_chunks, console)
    text = trial_summary_text(summary, population=population, seed=seed, draws=draws, total_s=times["total_s"])
    console.print(text, markup=False)
    console.print(f"Wrote {out_dir}/patients.csv, summary.csv, trial.png, timings.json", markup=False)


# ----------------------------------------------------------------------------------------------------------
# pkpd report, pkpd devices, pkpd version
# ----------------------------------------------------------------------------------------------------------
REPORT_HELP = """Write a self-contained HTML report of a run directory (no JavaScript, figures embedded).

RUN_DIR is the output directory of `pkpd fit`, `pkpd optimize`, `pkpd trial` or
`pkpd simulate --regimen`, or the output CSV of `pkpd simulate DATA` (or the
directory holding it and its <stem>.run.json). The run type is detected from
the files present. The report has the run's key tables (parameters and
objective; comparison and schedule; trial summary by genotype stratum;
outcome summary), its PNG figures, and the command, inputs (SHA-256) and
package versions recorded in run.json.

\b
Default --out: RUN_DIR/report.html (<stem>.report.html beside a simulation CSV).
"""


@app.command("report", help=REPORT_HELP)
def report_cmd(
    run_dir: Path = typer.Argument(
        ..., metavar="RUN_DIR", help="Run directory (or dataset-simulation CSV).", show_default=False
    ),
    out: Out = None,
    force: Force = False,
) -> None:
    from pkpd.html_report import write_report

    typer.echo(f"Wrote {write_report(run_dir, out, force=force)}")


@app.command("devices", quick=True)
def devices_cmd(
    precision: Precision = None,
    coordinator: Coordinator = None,
    num_processes: NumProcesses = None,
    process_id: ProcessId = None,
) -> None:
    """Print what JAX sees: platform, devices (memory where known), process index and count, precision."""
    _scaleout(None, None, precision, coordinator, num_processes, process_id)
    from pkpd.batch import describe

    d = describe()

    def gib(b):
        return "?" if b is None else f"{b / 2**30:.1f} GiB"

    lines = [
        f"platform: {d['platform']} (jax {d['jax']})",
        f"process: {d['process_index']} of {d['process_count']}",
        f"devices: {d['local_device_count']} local, {d['device_count']} in all; the patient axis is sharded over "
        f"{d['sharding_devices']}",
        f"precision: {d['precision']} (x64 {'on' if d['x64'] else 'off'}; default here: {d['default_precision']})",
    ]
    for dev in d["devices"]:
        mem = (
            f"memory limit {gib(dev['bytes_limit'])}, in use {gib(dev['bytes_in_use'])}"
            if dev["bytes_limit"] is not None
            else "memory: no statistics"
        )
        lines.append(
            f"  device {dev['id']}: {dev['kind']} ({dev['platform']}), process {dev['process']}"
            f"{'' if dev['local'] else ' (remote)'}, {mem}"
        )
    if d["platform"] == "cpu":
        lines.append(f"host memory available: {gib(d['host_available_bytes'])} (shared by the CPU devices)")
    if d["xla_flags"]:
        lines.append(f"XLA_FLAGS: {d['xla_flags']}")
    typer.echo("\n".join(lines))


@app.command(quick=True)
def version() -> None:
    """Print the pkpd package version."""
    import pkpd

    typer.echo(pkpd.__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    app()
