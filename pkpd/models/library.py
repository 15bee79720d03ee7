"""Built-in structural models, named ``{n}cmt_{input}[_effect][_metabolite][_mm]``.

``n`` is 1, 2 or 3 disposition compartments. ``input`` is one of

* ``iv``       doses go to CENTRAL (bolus or infusion, RATE column);
* ``oral``     first-order absorption from DEPOT (KA);
* ``dual``     extended-release biphasic absorption: a dose into DEPOT_FAST is split into a fraction FR
               absorbed with KA and 1-FR absorbed from DEPOT_SLOW with KA2 (each depot may have its
               own lag, ALAG1/ALAG2);
* ``zofo``     mixed zero/first-order input: a dose into DEPOT is split into a fraction FZO infused into
               CENTRAL over DZO hours and 1-FZO absorbed first-order with KA;
* ``transitN`` N transit compartments (Savic et al. 2007: KTR = (N+1)/MTT) then DEPOT with KA;
* ``weibull``  Weibull absorption: input rate F*D*d/dt[1-exp(-((t-td)/TD)^BETA)] into CENTRAL (ODE);

``_effect`` adds an effect compartment EFFECT holding the effect-site concentration CE (mg/L),
dCE/dt = KE0*(CP - CE), with no mass taken from CENTRAL (Sheiner et al. 1979).
``_metabolite`` adds a metabolite compartment METABOLITE formed from the parent's elimination with
fraction FM (amounts in parent-mass equivalents; convert with the molecular-weight ratio), eliminated
with CLM from volume VM; its concentration is reported as CM.
``_mm`` replaces linear elimination CL by Michaelis-Menten elimination VMAX*C/(KM + C) (nonlinear, ODE;
evaluated as VMAX*C/(KM + |C|), identical for C >= 0, so a numerical overshoot below 0 decays back).

Compartment numbers (CMT) follow the order: input compartments, CENTRAL, peripherals, EFFECT,
METABOLITE; :func:`describe_model` prints them.

References
----------
Savic RM, Jonker DM, Kerbusch T, Karlsson MO. Implementation of a transit compartment model for
describing drug absorption in pharmacokinetic studies. J Pharmacokinet Pharmacodyn 2007;34:711-726.
Sheiner LB, Stanski DR, Vozeh S, Miller RD, Ham J. Simultaneous modeling of pharmacokinetics and
pharmacodynamics: application to d-tubocurarine. Clin Pharmacol Ther 1979;25:358-371.
Beal SL, Sheiner LB, Boeckmann AJ, Bauer RJ. NONMEM Users Guides (1989-2017), PREDPP ADVAN1-4,11,12.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import jax.numpy as jnp
from jax import Array

from ..errors import ModelSpecError
from ._base import CompartmentModel, Output, Param, Route
from .registry import BUILTIN_NAME, REGISTRY

__all__ = ["get_model", "list_models", "describe_model", "register_model"]

_P = {
    "CL": Param("CL", "L/h", "clearance from the central compartment"),
    "V": Param("V", "L", "central volume of distribution"),
    "V1": Param("V1", "L", "central volume of distribution"),
    "Q": Param("Q", "L/h", "inter-compartmental clearance, central <-> peripheral"),
    "V2": Param("V2", "L", "peripheral volume (first peripheral)"),
    "Q2": Param("Q2", "L/h", "inter-compartmental clearance, central <-> first peripheral"),
    "Q3": Param("Q3", "L/h", "inter-compartmental clearance, central <-> second peripheral"),
    "V3": Param("V3", "L", "second peripheral volume"),
    "KA": Param("KA", "1/h", "first-order absorption rate constant"),
    "KA2": Param("KA2", "1/h", "first-order absorption rate constant of the slow depot"),
    "FR": Param("FR", "1", "fraction of the dose absorbed by the fast route (0-1)"),
    "FZO": Param("FZO", "1", "fraction of the dose given by zero-order input (0-1)"),
    "DZO": Param("DZO", "h", "duration of the zero-order input"),
    "MTT": Param("MTT", "h", "mean transit time through the transit chain, KTR=(N+1)/MTT"),
    "TD": Param("TD", "h", "Weibull scale (time by which 63.2 % of the dose is absorbed)"),
    "BETA": Param("BETA", "1", "Weibull shape"),
    "KE0": Param("KE0", "1/h", "effect-site equilibration rate constant"),
    "FM": Param("FM", "1", "fraction of parent elimination forming the metabolite"),
    "CLM": Param("CLM", "L/h", "metabolite clearance"),
    "VM": Param("VM", "L", "metabolite volume of distribution"),
    "VMAX": Param("VMAX", "mg/h", "maximum Michaelis-Menten elimination rate"),
    "KM": Param("KM", "mg/L", "Michaelis-Menten constant (concentration at half VMAX)"),
}

_NAME = BUILTIN_NAME  # the grammar's names (pkpd.models.registry)


def _k(name: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda p: p[name]


def _ratio(a: str, b: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda p: p[a] / p[b]


_REGISTRY = REGISTRY  # models registered by name (pkpd.models.registry)


def register_model(model: CompartmentModel) -> CompartmentModel:
    """Register a hand-built :class:`CompartmentModel` so :func:`get_model` finds it by name.

    Used by drug entries whose published structure is outside the grammar (e.g. two enantiomers,
    metabolite transit chains, binding models). Names must not collide with grammar names or with an
    already registered model of a different structure.
    """
    if not isinstance(model, CompartmentModel):
        raise ModelSpecError("register_model expects a CompartmentModel")
    if _NAME.match(model.name):
        raise ModelSpecError(f"model name {model.name!r} is reserved by the built-in grammar")
    old = _REGISTRY.get(model.name)
    if old is not None and old is not model:
        raise ModelSpecError(f"a different model is already registered as {model.name!r}")
    _REGISTRY[model.name] = model
    return model


def get_model(name: str) -> CompartmentModel:
    """Return the model called ``name``: a registered model, a built-in one from the grammar, or the model
    written in the ``[structure]`` section of a TOML file when ``name`` is its path (``*.toml``)."""
    key = str(name).strip()
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key.lower().endswith(".toml"):  # a model file with a [structure] section (pkpd.models.user)
        from .user import load_user_model

        return load_user_model(key)
    return _grammar_model(key)


@lru_cache(maxsize=None)
def _grammar_model(name: str) -> CompartmentModel:
    """Return the built-in model called ``name`` (see the module docstring for the grammar).

    Raises
    ------
    ModelSpecError
        If ``name`` does not follow the grammar; the message lists examples of valid names.
    """
    m = _NAME.match(name.strip())
    if not m:
        raise ModelSpecError(
            f"unknown model {name!r}. Built-in names look like 1cmt_iv, 2cmt_oral, 3cmt_oral, 2cmt_dual, "
            "1cmt_zofo, 1cmt_transit3, 1cmt_weibull, 2cmt_oral_effect, 1cmt_oral_metabolite, 1cmt_iv_mm; "
            "run `pkpd models` for the list"
        )
    ndisp = int(m.group(1))
    inp = m.group(2)
    ntr = int(m.group(3)) if m.group(3) else 0
    suffixes = m.group(4).split("_")[1:]
    if len(set(suffixes)) != len(suffixes):
        raise ModelSpecError(f"model {name!r}: repeated suffix")
    effect, metab, mm = "effect" in suffixes, "metabolite" in suffixes, "mm" in suffixes
    if inp.startswith("transit") and not 1 <= ntr <= 20:
        raise ModelSpecError(f"model {name!r}: between 1 and 20 transit compartments are supported")

    cmts: list[str] = []
    params: list[str] = []
    terms: list[tuple[int, int, Callable[[Mapping[str, Any]], Any]]] = []
    blocks: list[tuple[int, ...]] = []
    routes: dict[int, tuple[Route, ...]] = {}
    forcing_cmt = None

    # --- input compartments ---
    if inp == "oral":
        cmts.append("DEPOT")
        params.append("KA")
    elif inp == "dual":
        cmts += ["DEPOT_FAST", "DEPOT_SLOW"]
        params += ["KA", "KA2", "FR"]
        routes[0] = (Route(0, "FR"), Route(1, "FR", complement=True))
    elif inp == "zofo":
        cmts.append("DEPOT")
        params += ["KA", "FZO", "DZO"]
    elif inp.startswith("transit"):
        cmts += [f"TRANSIT{i + 1}" for i in range(ntr)] + ["DEPOT"]
        params += ["MTT", "KA"]
    elif inp == "weibull":
        cmts.append("WEIBULL")  # a dosing handle: doses here drive the Weibull input, no amount is held
        params += ["TD", "BETA"]
        forcing_cmt = 0
    n_in = len(cmts)
    central = n_in
    cmts.append("CENTRAL")
    periph = []
    if ndisp == 2:
        periph = ["PERIPH"]
    elif ndisp == 3:
        periph = ["PERIPH1", "PERIPH2"]
    cmts += periph
    vname = "V" if ndisp == 1 else "V1"
    elim = [] if mm else ["CL"]
    disp = {1: [vname], 2: ["V1", "Q", "V2"], 3: ["V1", "Q2", "V2", "Q3", "V3"]}[ndisp]
    params = elim + disp + params
    if mm:
        params += ["VMAX", "KM"]

    # input flows
    if inp in ("oral", "zofo"):
        terms += [(0, 0, lambda p: -p["KA"]), (central, 0, _k("KA"))]
        blocks.append((0,))
        if inp == "zofo":
            routes[0] = (
                Route(central, "FZO", mode="zero_order", duration="DZO"),
                Route(0, "FZO", complement=True),
            )
    elif inp == "dual":
        terms += [(0, 0, lambda p: -p["KA"]), (central, 0, _k("KA"))]
        terms += [(1, 1, lambda p: -p["KA2"]), (central, 1, _k("KA2"))]
        blocks += [(0,), (1,)]
    elif inp.startswith("transit"):

        def ktr(p: Mapping[str, Any]) -> Any:
            return (ntr + 1.0) / p["MTT"]

        for i in range(ntr):
            terms += [(i, i, lambda p: -ktr(p)), (i + 1, i, ktr)]
            blocks.append((i,))
        terms += [(ntr, ntr, lambda p: -p["KA"]), (central, ntr, _k("KA"))]
        blocks.append((ntr,))
    elif inp == "weibull":
        blocks.append((0,))

    # disposition
    c = central
    if not mm:
        terms.append((c, c, lambda p: -p["CL"] / p[vname]))
    if ndisp == 2:
        pp = c + 1
        terms += [
            (c, c, lambda p: -p["Q"] / p["V1"]),
            (pp, c, _ratio("Q", "V1")),
            (c, pp, _ratio("Q", "V2")),
            (pp, pp, lambda p: -p["Q"] / p["V2"]),
        ]
        blocks.append((c, pp))
    elif ndisp == 3:
        p1, p2 = c + 1, c + 2
        terms += [
            (c, c, lambda p: -p["Q2"] / p["V1"]),
            (p1, c, _ratio("Q2", "V1")),
            (c, p1, _ratio("Q2", "V2")),
            (p1, p1, lambda p: -p["Q2"] / p["V2"]),
            (c, c, lambda p: -p["Q3"] / p["V1"]),
            (p2, c, _ratio("Q3", "V1")),
            (c, p2, _ratio("Q3", "V3")),
            (p2, p2, lambda p: -p["Q3"] / p["V3"]),
        ]
        blocks.append((c, p1, p2))
    else:
        blocks.append((c,))

    outputs: list[Output] = []
    if effect:
        e = len(cmts)
        cmts.append("EFFECT")
        params.append("KE0")
        terms += [(e, c, lambda p: p["KE0"] / p[vname]), (e, e, lambda p: -p["KE0"])]
        blocks.append((e,))
        outputs.append(Output("CE", e, None, "mg/L", "effect-site concentration"))
    if metab:
        mi = len(cmts)
        cmts.append("METABOLITE")
        params += ["FM", "CLM", "VM"]
        if mm:
            raise ModelSpecError(
                "_metabolite with _mm is not available: metabolite formation from "
                "saturable elimination needs its own model"
            )
        terms += [(mi, c, lambda p: p["FM"] * p["CL"] / p[vname]), (mi, mi, lambda p: -p["CLM"] / p["VM"])]
        blocks.append((mi,))
        outputs.append(Output("CM", mi, "VM", "mg/L", "metabolite concentration (parent-mass equivalents)"))

    nonlinear = None
    if mm or inp == "weibull":
        nonlinear = _make_nonlinear(len(cmts), central, vname, mm, forcing_cmt)

    desc = {
        "iv": "intravenous dosing into CENTRAL",
        "oral": "first-order absorption from DEPOT",
        "dual": "biphasic (fast/slow) first-order absorption for extended-release products",
        "zofo": "mixed zero-order (into CENTRAL) and first-order (from DEPOT) input",
        "weibull": "Weibull-type absorption into CENTRAL",
    }.get(inp, f"absorption through {ntr} transit compartments then DEPOT")
    desc = (
        f"{ndisp}-compartment disposition, {desc}"
        + (", effect compartment" if effect else "")
        + (", metabolite" if metab else "")
        + (", Michaelis-Menten elimination" if mm else ", linear elimination")
    )
    return CompartmentModel(
        name=name.strip(),
        compartments=tuple(cmts),
        params=tuple(_P[q] for q in params),
        central=central,
        volume=vname,
        linear_terms=tuple(terms),
        blocks=tuple(blocks),
        description=desc,
        nonlinear=nonlinear,
        routes=routes,
        forcing_cmt=forcing_cmt,
        outputs=tuple(outputs),
    )


def _make_nonlinear(
    n: int, central: int, vname: str, mm: bool, forcing_cmt: int | None
) -> Callable[[Any, Array, Mapping[str, Any], Any], Array]:
    def g(t: Any, x: Array, p: Mapping[str, Any], forcing: Any) -> Array:
        dx = jnp.zeros(n, dtype=x.dtype)
        if mm:
            conc = x[central] / p[vname]
            # VMAX*C/(KM + |C|): the model's rate for C >= 0, continued as an odd function below 0, so that
            # an integrator's roundoff-level overshoot past C = 0 (after depletion, where the decay rate
            # VMAX/(V*KM) is huge for small KM) is pulled back to 0 instead of running away through the
            # pole at C = -KM (negative concentrations growing without bound).
            dx = dx.at[central].add(-p["VMAX"] * conc / (p["KM"] + jnp.abs(conc)))
        if forcing_cmt is not None and forcing is not None:
            # forcing = (arrival times, bioavailable amounts) of every dose into the Weibull handle.
            td, amt = forcing
            s = t - td
            pos = s > 0.0
            s_safe = jnp.where(pos, s, 1.0)
            z = (s_safe / p["TD"]) ** p["BETA"]
            dens = p["BETA"] / s_safe * z * jnp.exp(-z)
            dx = dx.at[central].add(jnp.sum(jnp.where(pos, amt * dens, 0.0)))
        return dx

    return g


_LISTED = (
    "1cmt_iv",
    "1cmt_oral",
    "2cmt_iv",
    "2cmt_oral",
    "3cmt_iv",
    "3cmt_oral",
    "2cmt_dual",
    "1cmt_zofo",
    "1cmt_transit3",
    "1cmt_weibull",
    "1cmt_iv_effect",
    "2cmt_oral_effect",
    "1cmt_oral_metabolite",
    "1cmt_iv_mm",
    "1cmt_oral_mm",
)


def list_models() -> tuple[str, ...]:
    """Representative built-in model names (the grammar admits more combinations)."""
    return _LISTED + tuple(sorted(_REGISTRY))


def describe_model(name: str) -> str:
    """Human-readable description: compartments with CMT numbers, parameters with units, outputs."""
    return get_model(name).describe()
