"""Command-line interface of the pkpd toolkit.

Commands: ``pkpd simulate``, ``pkpd fit``, ``pkpd forecast``, ``pkpd drugs``, ``pkpd models``, ``pkpd report``,
``pkpd version``.

A thin Typer layer over :func:`pkpd.simulate` and :mod:`pkpd.models`: no science lives here. JAX and the
``pkpd`` package are imported inside the commands so that ``pkpd --help`` stays fast.

Every error a user can provoke with bad input is a :class:`pkpd.PKPDError`; the CLI prints its message to
stderr (no traceback) and exits with code 1.
"""

from __future__ import annotations

import enum
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

__all__ = ["app", "main"]

MAX_PLOTTED_SUBJECTS = 20

app = typer.Typer(
    help=(
        "JAX PK/PD simulation of NONMEM-format datasets with NONMEM-exact dosing events.\n\n"
        "Units: TIME and II in h, AMT in mg, RATE in mg/h, concentrations (CP, CE, CM) in mg/L. "
        "Run `pkpd simulate --help` for the dataset, parameter-file and output formats."
    ),
    no_args_is_help=True,
    add_completion=False,
)


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


class _Abort(Exception):
    """A CLI-level usage problem (e.g. refusing to overwrite a file): message printed, exit code 1."""


def _stderr():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


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


@contextmanager
def _interruptible(kept: str = ""):
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


def _interruptible_command(fn):
    """Decorator of a long command: its whole body runs under :func:`_interruptible`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _interruptible():
            return fn(*args, **kwargs)

    return wrapper


def _staged_outputs():
    """Where every command writes its final outputs (:func:`pkpd.interrupts.staged_outputs`): right before
    writing, raise KeyboardInterrupt if SIGINT arrived during the run (even if it was swallowed); the files go
    to a staging directory (``stage.dir(out_dir)``, ``stage.path(file)``) and are moved into place together
    when the block completes. An interrupt or error before that leaves the output directory as it was (an
    earlier run's files untouched, also with --force) and removes the staged files."""
    from pkpd.interrupts import staged_outputs

    return staged_outputs()


def _fail(message: str) -> None:
    """Print ``message`` to stderr as plain text (no markup interpretation) and exit with code 1."""
    _stderr().print(f"Error: {message}", markup=False, highlight=False, style="bold red")
    raise typer.Exit(code=1)


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


_DEVICES_HELP = (
    "Local devices the patients are sharded over (default: all that JAX sees, see `pkpd devices`; "
    "on CPU XLA_FLAGS=--xla_force_host_platform_device_count=N gives N virtual devices)."
)
_CHUNK_HELP = "Patients (rows) per compiled batch; default: sized from the devices' free memory (CPU: 2,048)."
_PRECISION_HELP = (
    "float64, float32 or auto (float64 on CPU, float32 on accelerators); default: PKPD_PRECISION, else auto."
)
_RESUME_HELP = (
    "Continue an interrupted run in the same --out: the chunks already in OUT/chunks are kept, only "
    "the missing ones are computed."
)
_IGNORE_HELP = (
    "NONMEM IGNORE: a character tested on the first column (# always; @ = header lines; C) or "
    "conditions such as '(DV.EQ.0,TIME.GT.24)' (.EQ. .NE. .GT. .GE. .LT. .LE.; comma = or). "
    "Repeatable. Rows with C in a column named C are always ignored."
)
_ACCEPT_HELP = "NONMEM ACCEPT conditions, e.g. '(DVID.EQ.1)': only the rows where one holds are used."
_KEEP_CHUNKS_HELP = (
    "Keep OUT/chunks after a successful run (default: removed once the outputs and run.json are "
    "written; a failed or interrupted run always keeps them for --resume)."
)
_COORD_HELP = "Multi-process run: host:port of process 0 (default: JAX_COORDINATOR_ADDRESS)."
_NPROC_HELP = "Multi-process run: number of processes (default: JAX_NUM_PROCESSES)."
_PID_HELP = "Multi-process run: this process's id, 0 .. N-1 (default: JAX_PROCESS_ID)."


def _scaleout(
    devices: Optional[int] = None,
    chunk_size: Optional[int] = None,
    precision: Optional[str] = None,
    coordinator: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
) -> tuple[int, int]:
    """Start the multi-process runtime, set the precision, devices and chunk size of this process
    (:func:`pkpd.batch.setup`) before a command computes anything. Returns (process index, process count)."""
    import os
    import sys

    prec = precision or os.environ.get("PKPD_PRECISION") or "auto"
    if "pkpd" not in sys.modules and prec in ("float32", "float64"):
        os.environ["PKPD_PRECISION"] = prec  # before the first import of pkpd
    from pkpd import batch
    from pkpd.errors import PKPDError

    try:
        return batch.setup(
            devices=devices,
            chunk_size=chunk_size,
            precision=prec,
            coordinator=coordinator,
            num_processes=num_processes,
            process_id=process_id,
        )
    except PKPDError as exc:
        _fail(str(exc))


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

Refuses to overwrite an existing OUT or PLOT unless --force; never overwrites DATA.
"""


@app.command(help=SIMULATE_HELP)
@_interruptible_command
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
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Dataset mode: output CSV (default <DATA stem>_sim.csv). Regimen "
        "mode: output directory (default <regimen>_sim).",
    ),
    regimen: Optional[str] = typer.Option(
        None,
        "--regimen",
        "-r",
        help="Regimen mode: a regimen file (.toml, or .txt in the text form) "
        "or a shipped name (C0, C1, IYER_PLACEBO...).",
    ),
    population: int = typer.Option(
        1000,
        "--population",
        "-n",
        min=1,
        help="Regimen mode: number of SPINE-72 virtual patients (or replicates of "
        "--patient, each with its own variability draw).",
    ),
    seed: int = typer.Option(0, "--seed", "-s", help="Regimen mode: random seed (population, variability, demand)."),
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
    ignore: Optional[list[str]] = typer.Option(
        None, "--ignore", metavar="IGNORE", help="Dataset mode: " + _IGNORE_HELP
    ),
    accept: Optional[list[str]] = typer.Option(
        None, "--accept", metavar="CONDITIONS", help="Dataset mode: " + _ACCEPT_HELP.replace("used", "simulated")
    ),
    keep_chunks: bool = typer.Option(False, "--keep-chunks", help="Regimen mode: " + _KEEP_CHUNKS_HELP),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite OUT and PLOT if they exist."),
    devices: Optional[int] = typer.Option(None, "--devices", min=1, help="Regimen mode: " + _DEVICES_HELP),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", min=1, help="Regimen mode: " + _CHUNK_HELP),
    precision: Optional[str] = typer.Option(None, "--precision", help=_PRECISION_HELP),
    resume: bool = typer.Option(False, "--resume", help="Regimen mode: " + _RESUME_HELP),
    coordinator: Optional[str] = typer.Option(None, "--coordinator", help="Regimen mode: " + _COORD_HELP),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", min=1, help="Regimen mode: " + _NPROC_HELP),
    process_id: Optional[int] = typer.Option(None, "--process-id", min=0, help="Regimen mode: " + _PID_HELP),
) -> None:
    args = dict(locals())
    if regimen is not None:
        if data is not None or params is not None or model is not None:
            _fail(
                "--regimen simulates a regimen in a virtual population: do not also give DATA, --params or "
                "--model (those are for dataset mode)"
            )
        dataset_only = [
            f
            for f, v in (
                ("--solver", solver),
                ("--ode-method", ode_method),
                ("--interpolation", interpolation),
                ("--plot", plot),
                ("--grid", grid),
                ("--ignore", ignore or None),
                ("--accept", accept or None),
            )
            if v is not None
        ]
        if dataset_only:  # the regimen simulator has its own exact solver: say so rather than ignore the option
            _fail(
                f"{', '.join(dataset_only)} apply to dataset mode (DATA --params), not to --regimen runs (the "
                "regimen simulator uses its own exact event solver)"
            )
        scale = _scaleout(devices, chunk_size, precision, coordinator, num_processes, process_id)
        _simulate_regimen(
            regimen,
            population,
            seed,
            patient,
            out,
            fmt,
            force,
            args,
            resume=resume,
            scale=scale,
            keep_chunks=keep_chunks,
        )
        return
    given = [
        f
        for f, v in (
            ("--devices", devices),
            ("--chunk-size", chunk_size),
            ("--resume", resume or None),
            ("--keep-chunks", keep_chunks or None),
            ("--coordinator", coordinator),
            ("--num-processes", num_processes),
            ("--process-id", process_id),
        )
        if v is not None
    ]
    if given:
        _fail(f"{', '.join(given)} apply to population runs (--regimen), not to dataset mode")
    _scaleout(precision=precision)
    if data is None or params is None:
        _fail("give DATA and --params (dataset mode) or --regimen (population mode); see `pkpd simulate --help`")
    out_path = out if out is not None else Path.cwd() / f"{data.stem}_sim.csv"
    try:
        _check_writable(out_path, "output file", "--out", force, data)
        if plot is not None:
            if _same_file(plot, out_path):
                raise _Abort("--plot and --out name the same file")
            _check_writable(plot, "plot file", "--plot", force, data)
    except _Abort as exc:
        _fail(str(exc))

    from pkpd.errors import PKPDError

    try:
        import pkpd

        spec = pkpd.load_params(params)
        model_name = model or spec.model
        if model_name is None:
            raise pkpd.ModelSpecError(
                f'no model given: pass --model NAME or set `model = "..."` in {params} (see `pkpd models`)'
            )
        model_obj = pkpd.get_model(model_name)
        options = dict(
            solver=solver.value if solver else None,
            ode_method=ode_method.value if ode_method else None,
            interpolation=interpolation.value if interpolation else None,
            ignore=ignore,
            accept=accept,
        )
        result = pkpd.simulate(data, model_obj, spec, grid=grid, **options)
        curves = None
        if plot is not None:  # the plot draws lines on a grid: the --grid, else a dense one over the records
            from pkpd.simulate import dense_grid

            curves = (
                result if grid is not None else pkpd.simulate(data, model_obj, spec, grid=dense_grid(result), **options)
            )
    except PKPDError as exc:
        _fail(str(exc))

    from pkpd.manifest import manifest_path

    regimen_only = ("regimen", "population", "seed", "patient", "fmt", "keep_chunks")
    try:
        with _staged_outputs() as stage:  # the CSV, the plot and the manifest appear together or not at all
            try:
                result.to_csv(stage.path(out_path), index=False)
            except OSError as exc:
                _fail(f"cannot write the output file {out_path}: {exc}")
            if plot is not None:
                from pkpd.simulate import plot_profiles

                try:
                    shown, total = plot_profiles(curves, model_obj, stage.path(plot), max_ids=MAX_PLOTTED_SUBJECTS)
                except OSError as exc:
                    _fail(f"cannot write the plot file {plot}: {exc}")
            _manifest(
                manifest_path(out_path),
                "simulate",
                {k: v for k, v in args.items() if k not in regimen_only},
                {"data": data, "params": params},
                [out_path] + ([plot] if plot is not None else []),
                stage,
            )
    except OSError as exc:  # moving them into place failed (pkpd.interrupts.CommitError)
        _fail(str(exc))
    used = solver.value if solver else (spec.solver or "auto")
    if used == "auto":
        used = f"auto -> {'analytic' if model_obj.is_linear else 'ode'}"
    n_stiff = int(result.attrs.get("stiff_resolved", 0))
    if n_stiff:
        used += f"; {n_stiff} subject(s) re-solved with the stiff ODE method kvaerno5 (failed the first solver's check)"
    n_subj = result["ID"].nunique() if "ID" in result.columns else 0

    from rich.console import Console

    console = Console(soft_wrap=True, highlight=False)
    if result.attrs.get("ignored"):
        console.print(f"note: {result.attrs['ignored']}", markup=False)
    n_grid = int((result["GRID"] == 1).sum()) if grid is not None else 0
    rows = f"{len(result)} rows ({n_grid} on the --grid)" if grid is not None else f"{len(result)} rows"
    console.print(
        f"Simulated {rows}, {n_subj} subject{'s' if n_subj != 1 else ''} with model "
        f"{model_obj.name} (solver {used}) -> {out_path}",
        markup=False,
    )
    if plot is not None:
        more = f" (first {shown} of {total} subjects)" if shown < total else ""
        console.print(f"Plot of CP vs TIME -> {plot}{more}", markup=False)


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
    *,
    resume: bool = False,
    scale: tuple[int, int] = (0, 1),
    keep_chunks: bool = False,
) -> None:
    from pkpd.errors import PKPDError

    index, count = scale

    if fmt not in ("csv", "parquet"):
        _fail(f"--format must be csv or parquet, got {fmt!r}")
    try:
        reg = _load_regimen(spec)
        out_dir = out if out is not None else Path.cwd() / f"{reg.name}_sim"
        if out_dir.exists() and not out_dir.is_dir():
            raise _Abort(f"the output path {out_dir} is a file; give a directory with --out")
        if index == 0 and resume and not force:  # only a run this command recognises is resumed
            from pkpd.batch import check_resume_dir
            from pkpd.regimen_run import STORE_KIND

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
    except _Abort as exc:
        _fail(str(exc))
    except PKPDError as exc:
        _fail(str(exc))

    from rich.console import Console

    console = Console(soft_wrap=True, highlight=False)
    with _interruptible(f" The finished chunks are kept in {out_dir / 'chunks'}: rerun with --resume to continue."):
        _simulate_regimen_run(
            reg, spec, n, seed, patient, out_dir, fmt, args, resume, index, count, console, keep_chunks
        )


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
    console,
    keep_chunks: bool = False,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pkpd.errors import PKPDError

    try:
        from pkpd.patients import load_patient, patients_to_frame, spine72_population
        from pkpd.population_checks import regimen_findings
        from pkpd.regimen_run import simulate_regimen_stored
        from pkpd.report import write_population_outputs

        if patient is not None:
            pt = load_patient(patient)
            pop = patients_to_frame([pt] * n)
            pop["ID"] = range(1, n + 1)
            who = f"{n} replicate(s) of patient {patient.name}"
        else:
            pop = spine72_population(n, seed)
            who = f"{n} SPINE-72 virtual patients (seed {seed})"
        findings = regimen_findings(reg, pop)
        for _, row in findings.iterrows():
            style = "bold red" if row["severity"] == "error" else "yellow"
            console.print(
                f"{row['severity'].upper()}: {row['message']} [{row['patients']} patient(s)]", style=style, markup=False
            )
        console.print(f"Simulating regimen {reg.name} in {who}, 72 h ...", markup=False)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as prog:
            task = prog.add_task("patients", total=n)
            # chunk by chunk into OUT/chunks (resumable; each process takes its share): pkpd.regimen_run
            res = simulate_regimen_stored(
                reg, pop, out_dir / "chunks", seed=seed, resume=resume, progress=lambda k: prog.advance(task, k)
            )
        from pkpd.batch import barrier

        barrier("pkpd-chunks-merged")  # every process has read the chunks: process 0 may delete them later
        if index != 0:
            console.print(
                f"process {index} of {count}: its chunks are in {out_dir / 'chunks'}; process 0 writes the outputs",
                markup=False,
            )
            return
        from regimens.io import regimen_file

        with _staged_outputs() as stage:  # the tables, figures and run.json appear together or not at all
            written = write_population_outputs(res, stage.dir(out_dir), findings=findings, fmt=fmt)
            _manifest(
                out_dir / "run.json",
                "simulate",
                args,
                {"regimen": regimen_file(spec) or spec, "patient": patient},
                written,
                stage,
            )
        written = stage.finals(written)
    except PKPDError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the outputs: {exc}")
    _remove_chunks(out_dir, keep_chunks, console)
    for note in res.notes:
        console.print(f"note: {note}", markup=False)
    s = res.summary()
    console.print(
        f"72-h MME mean {s.loc['MME_0_72', 'mean']:.0f} (P90 {s.loc['MME_0_72', 'p90']:.0f}) mg; time with NRS <= 3 "
        f"{100 * s.loc['TIT3', 'mean']:.0f} %; pain AUC {s.loc['PAIN_AUC', 'mean']:.0f} NRS*h; peak bupivacaine "
        f"{s.loc['PEAK_BUPI', 'mean']:.0f} ng/mL (max {res.patients['PEAK_BUPI'].max():.0f})",
        markup=False,
    )
    console.print("Wrote " + ", ".join(str(p) for p in written), markup=False)


class MethodChoice(str, enum.Enum):
    laplace = "laplace"
    nuts = "nuts"
    svi = "svi"


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
@_interruptible_command
def fit_command(
    data: Path = typer.Argument(..., metavar="DATA", help="NONMEM-format dataset (CSV).", show_default=False),
    model: Path = typer.Option(..., "--model", "-m", help="Population model file (TOML).", show_default=False),
    method: MethodChoice = typer.Option(
        MethodChoice.laplace,
        "--method",
        case_sensitive=False,
        help="laplace (maximum likelihood), nuts or svi (Bayesian).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default <DATA stem>_fit)."),
    force: bool = typer.Option(
        False,
        "--force",
        "-f",
        help="Write into an existing non-empty output directory, overwriting the files of a previous fit.",
    ),
    chains: int = typer.Option(4, "--chains", min=1, help="nuts: number of chains."),
    warmup: int = typer.Option(1000, "--warmup", min=1, help="nuts: warm-up iterations per chain."),
    samples: int = typer.Option(
        1000, "--samples", min=1, help="nuts: posterior draws per chain; svi: draws of the fitted approximation."
    ),
    svi_steps: int = typer.Option(2000, "--svi-steps", min=1, help="svi: optimization steps."),
    seed: int = typer.Option(0, "--seed", "-s", help="Random seed (sampling, NPDE and VPC simulations)."),
    vpc_replicates: int = typer.Option(200, "--vpc-replicates", min=2, help="Simulated datasets of the VPC."),
    vpc_stratify: Optional[str] = typer.Option(
        None,
        "--vpc-stratify",
        metavar="COLUMN",
        help="Dataset column stratifying the prediction-corrected VPC "
        "(pcvpc.png, pcvpc.csv): one row of panels per value (more "
        "than 6 values: split at the median).",
    ),
    ignore: Optional[list[str]] = typer.Option(
        None, "--ignore", metavar="IGNORE", help=_IGNORE_HELP.replace("used", "fitted")
    ),
    accept: Optional[list[str]] = typer.Option(
        None, "--accept", metavar="CONDITIONS", help=_ACCEPT_HELP.replace("used", "fitted")
    ),
    npde_replicates: int = typer.Option(1000, "--npde-replicates", min=2, help="Simulated datasets of the NPDE."),
    solver: SolverChoice = typer.Option(
        SolverChoice.auto,
        "--solver",
        case_sensitive=False,
        help="auto (exact for linear models, ODE otherwise), analytic or ode.",
    ),
    log_gof: bool = typer.Option(False, "--log-gof", help="Log axes in gof.png."),
    devices: Optional[int] = typer.Option(
        None,
        "--devices",
        min=1,
        help="laplace: local devices the subjects are sharded over (default: all that JAX sees).",
    ),
    precision: Optional[str] = typer.Option(None, "--precision", help=_PRECISION_HELP),
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

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from pkpd.errors import PKPDError

    console = Console(soft_wrap=True, highlight=False)
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
    try:
        from pkpd.fit.api import fit as run_fit

        if method is MethodChoice.laplace:  # a spinner with the stage, iteration and -2LL
            with Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True
            ) as prog:
                task = prog.add_task("starting", total=None)

                def status(text: str) -> None:
                    prog.update(task, description=text)

                def iteration(k: int, value: float) -> None:
                    prog.update(task, description=f"estimating (laplace): iteration {k}, -2LL {value:.4f}")

                res = run_fit(data, model, "laplace", callback=iteration, status=status, **opts)
                with _staged_outputs() as stage:  # every output and run.json appear together or not at all
                    prog.update(task, description="writing the output directory")
                    written = res.save(stage.dir(out_dir), force=True, log_axes=log_gof)
                    _manifest(out_dir / "run.json", "fit", args, {"data": data, "model": model}, written, stage)
        else:  # the sampler draws its own progress bar; stages as plain lines

            def say(text: str) -> None:
                err.print(f"{text} ...", markup=False, highlight=False)

            res = run_fit(data, model, method.value, progress=True, status=say, **opts)
            with _staged_outputs() as stage:
                say("writing the output directory")
                written = res.save(stage.dir(out_dir), force=True, log_axes=log_gof)
                _manifest(out_dir / "run.json", "fit", args, {"data": data, "model": model}, written, stage)
        written = stage.finals(written)
    except PKPDError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the outputs to {out_dir}: {exc}")
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
@_interruptible_command
def forecast_command(
    data: Path = typer.Argument(..., metavar="DATA", help="One patient's records (CSV).", show_default=False),
    model: Path = typer.Option(
        ..., "--model", "-m", help="Population model with final estimates (TOML).", show_default=False
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default <DATA stem>_forecast)."),
    until: Optional[float] = typer.Option(
        None, "--until", min=0.0, help="End of the prediction grid (h); default 24 h after the last record."
    ),
    points: int = typer.Option(200, "--points", min=2, help="Points of the prediction grid."),
    draws: int = typer.Option(1000, "--draws", min=10, help="Posterior draws."),
    seed: int = typer.Option(0, "--seed", "-s", help="Random seed."),
    ignore: Optional[list[str]] = typer.Option(None, "--ignore", metavar="IGNORE", help=_IGNORE_HELP),
    accept: Optional[list[str]] = typer.Option(
        None, "--accept", metavar="CONDITIONS", help=_ACCEPT_HELP + " '(ID.EQ.3)' picks one patient of a file."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Write into an existing non-empty output directory."),
) -> None:
    out_dir = _data_model_out(data, "the patient data", model, out, "_forecast", force)
    from rich.console import Console

    from pkpd.errors import PKPDError

    err = _stderr()
    try:
        import numpy as np

        from pkpd.fit.forecast import forecast

        times = None if until is None else np.linspace(0.0, until, points)
        with err.status("forecasting (first run compiles the model: up to a minute)"):
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
                    import shutil

                    shutil.copyfile(model, stage.path(out_dir / "model.toml"))
    except PKPDError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the outputs to {out_dir}: {exc}")
    console = Console(soft_wrap=True, highlight=False)
    console.print(fc.summary_text(), markup=False)
    console.print(
        f"Wrote parameters.csv, draws.csv, predictions.csv, observations.csv, forecast.png, model.toml to {out_dir}",
        markup=False,
    )


drugs_app = typer.Typer(
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


@drugs_app.command("list")
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


@drugs_app.command("show")
def drugs_show(name: str = typer.Argument(..., help="Drug name (aliases such as paracetamol work).")) -> None:
    """Parameters with value, unit, IIV, covariates and source; PD values; label limits."""
    from pkpd.errors import PKPDError

    try:
        from pkpd.drugs import get_drug

        d = get_drug(name)
    except PKPDError as exc:
        _fail(str(exc))
    console = _wide_console()
    for line in _drug_lines(d):
        console.print(line, markup=False)


@app.command()
def models(
    name: Optional[str] = typer.Argument(
        None, help="Model name: print its compartments (CMT numbers), parameters with units and outputs."
    ),
) -> None:
    """List the built-in models, or describe one (compartments, parameters with units, outputs)."""
    from pkpd.errors import PKPDError

    try:
        from pkpd.models import describe_model, get_model, list_models

        if name is not None:
            text = describe_model(name)
            from rich.console import Console

            Console(soft_wrap=True, highlight=False).print(text, markup=False)
            return
        rows = [(m, get_model(m)) for m in list_models()]
    except PKPDError as exc:
        _fail(str(exc))

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Built-in models (the name grammar admits more combinations; see `pkpd models NAME`)")
    table.add_column("model", no_wrap=True)
    table.add_column("description")
    table.add_column("compartments (CMT=name)")
    for m, obj in rows:
        table.add_row(Text(m), Text(obj.description), Text(obj.compartment_table()))
    Console().print(table)


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
@_interruptible_command
def optimize_cmd(
    patient: Path = typer.Option(..., "--patient", "-p", help="Patient file (TOML).", show_default=False),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output directory (default <PATIENT stem>_optimized)."
    ),
    draws: int = typer.Option(
        128,
        "--draws",
        min=2,
        help="Scenario draws of the patient (the exact evaluation uses all; gradient steps use minibatches of 8).",
    ),
    steps: int = typer.Option(30, "--steps", min=1, help="Gradient steps."),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed of the variability draws."),
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
    force: bool = typer.Option(False, "--force", "-f", help="Write into an existing non-empty output directory."),
    devices: Optional[int] = typer.Option(
        None,
        "--devices",
        min=1,
        help="Local devices the draws of the exact simulations are sharded over (default: all that JAX sees).",
    ),
    chunk_size: Optional[int] = typer.Option(
        None,
        "--chunk-size",
        min=1,
        help="Rows (draws) per compiled batch of the exact simulations; default: sized from free memory.",
    ),
    precision: Optional[str] = typer.Option(None, "--precision", help=_PRECISION_HELP),
) -> None:
    args = dict(locals())
    _scaleout(devices, chunk_size, precision)
    if not patient.is_file():
        _fail(f"the patient file {patient} does not exist or is not a file")
    out_dir = out if out is not None else Path.cwd() / f"{patient.stem}_optimized"
    _check_out_dir(out_dir, force)
    from rich.console import Console

    from pkpd.errors import PKPDError

    console = Console(soft_wrap=True, highlight=False)
    try:
        from pkpd.drugs.products import get_product
        from pkpd.patients import load_patient
        from regimens.optimize import OptimizeSettings, optimize_patient

        pt = load_patient(patient)
        with console.status("optimizing ...") as status:
            extra = {"products": tuple(x.strip() for x in products.split(",") if x.strip())} if products else {}
            for key in extra.get("products", ()):
                get_product(key)  # a clear error for an unknown product
            prop = optimize_patient(
                pt.to_row(),
                settings=OptimizeSettings(draws=draws, steps=steps, seed=seed, min_time_in_target=min_tit, **extra),
                progress=lambda text: status.update(f"optimizing: {text} ..."),
                posterior=posterior,
            )
        inputs = {"patient": patient}
        if posterior is not None:
            inputs.update({"posterior draws": posterior / "draws.csv", "posterior model": posterior / "model.toml"})
        with _staged_outputs() as stage:  # the proposal's files and run.json appear together or not at all
            written = prop.save(stage.dir(out_dir), force=True)
            _manifest(out_dir / "run.json", "optimize", args, inputs, written, stage)
        written = stage.finals(written)
    except PKPDError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the outputs: {exc}")
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
    c = prop.comparison
    console.print(
        f"{'':10s} {'MME mean':>9s} {'MME P90':>8s} {'NRS<=3':>7s} {'NRS>=4':>7s} {'NRS>=7':>7s} "
        f"{'pain AUC':>9s} {'P(OIRD)':>9s} {'P(PONV)':>8s} {'LAST':>5s}",
        markup=False,
    )
    for name, r in c.iterrows():
        console.print(
            f"{name:10s} {r['MME_mean']:9.1f} {r['MME_P90']:8.1f} {100 * r['TIT3']:6.0f}% "
            f"{100 * r['TIME_NRS_GE4']:6.0f}% {100 * r['TIME_NRS_GE7']:6.1f}% "
            f"{r['PAIN_AUC']:9.0f} {r['P_OIRD']:9.1e} {r['P_PONV']:8.2f} {r['LAST_INDEX_max']:5.2f}",
            markup=False,
        )
    console.print(
        "(MME: mg oral morphine equivalents over 0-72 h; NRS<=3 / NRS>=4 / NRS>=7: share of 0-72 h; pain AUC: NRS*h)",
        markup=False,
    )
    console.print("Schedule:", markup=False)
    for (d, rt), g in prop.schedule.groupby(["drug", "route"], sort=False):
        doses = ", ".join(f"{a:g} mg at {t:g} h" for t, a in zip(g["time_h"], g["dose_mg"]))
        console.print(f"  {d} {rt}: {doses}", markup=False)
    for note in prop.notes:
        console.print(f"why: {note}", markup=False)
    console.print("Wrote " + ", ".join(str(p) for p in written), markup=False)


#: The ``kind`` of the chunk store :func:`regimens.optimize.run_trial` writes (its run identity).
TRIAL_STORE_KIND = "spine72_trial"

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
@_interruptible_command
def trial_cmd(
    population: int = typer.Option(1000, "--population", "-n", min=1, help="Virtual patients."),
    seed: int = typer.Option(1, "--seed", "-s", help="Population seed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default spine72_trial)."),
    draws: int = typer.Option(128, "--draws", min=1, help="Variability draws per patient."),
    steps: int = typer.Option(30, "--steps", min=1, help="Gradient steps."),
    chunk: int = typer.Option(
        50, "--chunk", "--chunk-size", min=1, help="Patients per batched call (memory grows with chunk x draws)."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Write into an existing non-empty output directory."),
    resume: bool = typer.Option(False, "--resume", help=_RESUME_HELP),
    keep_chunks: bool = typer.Option(False, "--keep-chunks", help=_KEEP_CHUNKS_HELP),
    devices: Optional[int] = typer.Option(None, "--devices", min=1, help=_DEVICES_HELP),
    precision: Optional[str] = typer.Option(None, "--precision", help=_PRECISION_HELP),
    coordinator: Optional[str] = typer.Option(None, "--coordinator", help=_COORD_HELP),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", min=1, help=_NPROC_HELP),
    process_id: Optional[int] = typer.Option(None, "--process-id", min=0, help=_PID_HELP),
) -> None:
    args = dict(locals())
    out_dir = out if out is not None else Path.cwd() / "spine72_trial"
    index, count = _scaleout(devices, None, precision, coordinator, num_processes, process_id)
    if index == 0:  # completed chunks go to OUT/chunks as they finish (--resume continues from them)
        if resume and not force:  # only a trial this command recognises is resumed
            from pkpd.batch import check_resume_dir
            from pkpd.errors import PKPDError

            try:
                check_resume_dir(out_dir, TRIAL_STORE_KIND, "trial")
            except PKPDError as exc:
                _fail(str(exc))
        else:
            _check_out_dir(out_dir, force)
    with _interruptible(f" The finished chunks are kept in {out_dir / 'chunks'}: rerun with --resume to continue."):
        _trial_run(population, seed, out_dir, draws, steps, chunk, resume, index, count, args, keep_chunks)


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
    keep_chunks: bool = False,
) -> None:
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pkpd.errors import PKPDError

    console = Console(soft_wrap=True, highlight=False)
    try:
        from regimens.optimize import OptimizeSettings, plot_trial, run_trial

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as prog:
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
        from pkpd.batch import barrier

        barrier("pkpd-chunks-merged")  # every process has read the chunks: process 0 may delete them later
        if index != 0:
            console.print(
                f"process {index} of {count}: its chunks are in {out_dir / 'chunks'}; process 0 writes the outputs",
                markup=False,
            )
            return
        with _staged_outputs() as stage:  # the tables, figure and run.json appear together or not at all
            staging = stage.dir(out_dir)
            patients.to_csv(staging / "patients.csv", index=False)
            summary.to_csv(staging / "summary.csv", index=False)
            (staging / "timings.json").write_text(json.dumps(times, indent=2) + "\n")
            plot_trial(patients, staging / "trial.png")
            _manifest(
                out_dir / "run.json",
                "trial",
                args,
                {},
                [out_dir / n for n in ("patients.csv", "summary.csv", "timings.json", "trial.png")],
                stage,
            )
    except PKPDError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the outputs: {exc}")
    _remove_chunks(out_dir, keep_chunks, console)
    allp = summary[summary["stratum"] == "all"].set_index("regimen")
    console.print(
        f"SPINE-72 trial: {population} patients (seed {seed}), {draws} draws each, {times['total_s']:.0f} s",
        markup=False,
    )
    for reg, r in allp.iterrows():
        console.print(
            f"  {reg:9s} MME {r['MME_mean']:7.1f} (P90 {r['MME_P90']:6.1f})  NRS<=3 {100 * r['TIT3']:5.1f} %  "
            f"pain AUC {r['PAIN_AUC']:6.1f}  P(OIRD) {r['P_OIRD']:.1e}",
            markup=False,
        )
    p = allp.loc["proposal"]
    console.print(
        f"proposal vs C0: MME {p['MME_vs_C0_pct']:.1f} % lower; vs C1: {p['MME_vs_C1_pct']:.1f} % lower; "
        f"time in target {100 * (p['TIT3'] - allp.loc['C1', 'TIT3']):+.1f} points vs C1; "
        f"{int(p['n_unsafe'])} proposal(s) failed a hard check",
        markup=False,
    )
    console.print(f"Wrote {out_dir}/patients.csv, summary.csv, trial.png, timings.json", markup=False)


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
@_interruptible_command
def report_cmd(
    run_dir: Path = typer.Argument(
        ..., metavar="RUN_DIR", help="Run directory (or dataset-simulation CSV).", show_default=False
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report file (.html)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing report file."),
) -> None:
    from pkpd.errors import PKPDError

    try:
        from pkpd.html_report import write_report

        path = write_report(run_dir, out, force=force)
    except PKPDError as exc:
        _fail(str(exc))
    typer.echo(f"Wrote {path}")


@app.command("devices")
def devices_cmd(
    precision: Optional[str] = typer.Option(None, "--precision", help=_PRECISION_HELP),
    coordinator: Optional[str] = typer.Option(None, "--coordinator", help=_COORD_HELP),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", min=1, help=_NPROC_HELP),
    process_id: Optional[int] = typer.Option(None, "--process-id", min=0, help=_PID_HELP),
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


@app.command()
def version() -> None:
    """Print the pkpd package version."""
    import pkpd

    typer.echo(pkpd.__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    app()
