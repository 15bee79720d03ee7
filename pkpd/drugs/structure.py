"""A drug-library entry whose structural model is written in the model language (docs/model_language.md).

A library entry (:class:`~pkpd.drugs.Drug`) is a built-in structural model plus sourced parameter values,
covariate effects, variability and dosing routes; the regimen simulator adds the drug's PD, MME factor and
limits, all looked up by the drug's name. :func:`with_structure` keeps all of that and replaces only the
structure by one written in a ``[structure]`` section (a TOML file, or a compiled
:class:`~pkpd.models.user.UserModel`)::

    from pkpd.drugs import get_drug, with_structure
    oxy = with_structure(get_drug("oxycodone"), "oxycodone_dual1.toml")

The structure's parameters are the entry's: every parameter symbol of its equations must be a parameter
of the entry (an error names the ones that are not, and lists what the entry supplies). Its states are the
compartments, CMT 1, 2, ... in the order written; the entry's routes (``po -> CMT 1``...) and its dosing
parameters (``F1``, ``ALAG1``...) keep their CMT numbers unless ``routes`` (or a ``[drug] routes`` table in
the file) maps a route to a state by name.

In a regimen simulation :func:`regimen_entry` is what :class:`pkpd.population.SimOptions` ``structures``
goes through: ``SimOptions(structures={"oxycodone": "oxycodone_dual1.toml"})``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelSpecError
from ._base import Drug

__all__ = ["regimen_entry", "with_structure"]

_DRUG_KEYS = {"name", "routes"}


def _load(structure) -> tuple[Any, str, Mapping]:
    """``(model, how messages name it, [drug] table)`` of a path, a model object or a model name."""
    from ..models import CompartmentModel, get_model
    from ..models.user import compile_structure, structure_from_file

    if isinstance(structure, CompartmentModel):
        src = getattr(structure, "source", None)
        return structure, (f"model file {src}" if src else f"structure {structure.name}"), {}
    if isinstance(structure, (str, Path)) and str(structure).lower().endswith(".toml"):
        path = Path(structure)
        table, text = structure_from_file(path)
        where = f"model file {path}"
        model = compile_structure(table, name=path.stem, where=where, text=text, source=str(path))
        section = tomllib.loads(text).get("drug", {})
        if not isinstance(section, Mapping):
            raise ModelSpecError(f"{where}: [drug] must be a table with keys {', '.join(sorted(_DRUG_KEYS))}")
        bad = sorted(set(section) - _DRUG_KEYS)
        if bad:
            raise ModelSpecError(
                f"{where} [drug]: unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(_DRUG_KEYS))}"
            )
        return model, where, section
    if isinstance(structure, str):
        return get_model(structure), f"model {structure}", {}
    raise ModelSpecError(
        f"a drug structure must be a model file (.toml), a model name or a model object, got {type(structure).__name__}"
    )


def _state_over_parameter(model, name: str) -> tuple[int, str | None] | None:
    """``(state index, parameter)`` when output ``name`` is ``STATE / PARAMETER`` (parameter ``None``: ``STATE``).

    Checked numerically at random positive parameter values and states: the output must be linear in the
    states, depend on exactly one state, and its coefficient must be one (``None``) or ``1 / P`` for one
    parameter ``P``. ``None`` when it is not of that form.
    """
    fn = model.output_fns[name]
    n = model.n_cmt
    pnames = list(model.param_names)
    rng = np.random.default_rng(20261)
    found: tuple[int, str | None] | None = None
    for _ in range(4):
        p = {q: float(np.exp(rng.uniform(np.log(0.2), np.log(5.0)))) for q in pnames}

        def out(x):
            env = dict(p)
            env.update({s: float(x[i]) for i, s in enumerate(model.compartments)})
            return float(fn(env, np))

        with np.errstate(all="ignore"):
            coef = np.array([out(np.eye(n)[i]) for i in range(n)])
            w = rng.uniform(0.1, 10.0, n)
            if not (
                np.all(np.isfinite(coef))
                and abs(out(np.zeros(n))) <= 1e-12 * np.abs(coef).max()
                and np.isclose(out(w), coef @ w, rtol=1e-10, atol=0.0)
            ):
                return None
        idx = np.flatnonzero(coef != 0.0)
        if len(idx) != 1:
            return None
        c = coef[idx[0]]
        divs = [q for q in pnames if np.isclose(c * p[q], 1.0, rtol=1e-12, atol=0.0)]
        if np.isclose(c, 1.0, rtol=1e-12, atol=0.0):
            divs = [None] + divs
        cand = [(int(idx[0]), q) for q in divs]
        if found is None:
            if not cand:
                return None
            found = cand[0]
        elif found not in cand:
            return None
    return found


def _adapt_outputs(model, where: str):
    """``model`` with ``central``/``volume`` of its ``CP`` output and its other outputs as ``Output`` entries.

    The regimen simulator (like every built-in model) reads a concentration as ``state / volume``; a user
    model's outputs are expressions, so each one of the form ``STATE / PARAMETER`` is recognised here.
    """
    from ..models._base import Output

    if "CP" not in model.output_fns:
        raise ModelSpecError(
            f"{where}: a drug structure needs an output CP (the plasma concentration, mg/L), "
            f'e.g. "CP = CENTRAL/V"; outputs: {", ".join(model.output_fns)}'
        )
    cp = _state_over_parameter(model, "CP")
    if cp is None or cp[1] is None:
        raise ModelSpecError(
            f"{where}: output CP must be one state divided by one parameter of the entry (e.g. "
            '"CP = CENTRAL/V1"): the drug library reports concentrations as amount / volume'
        )
    outputs = []
    for name in model.output_fns:
        if name == "CP":
            continue
        form = _state_over_parameter(model, name)
        if form is not None:
            outputs.append(Output(name, form[0], form[1], "", f"output {name} of {model.name}"))
    return dataclasses.replace(model, central=cp[0], volume=cp[1], outputs=tuple(outputs))


def _norm_unit(u: str) -> str:
    return "".join(str(u).split())


def with_structure(drug: Drug | str, structure, *, routes: Mapping[str, int | str] | None = None) -> Drug:
    """A copy of a library entry whose structural model is ``structure`` instead of its built-in model.

    Parameters
    ----------
    drug
        A :class:`~pkpd.drugs.Drug` or a library drug name (``"oxycodone"``).
    structure
        A model file with a ``[structure]`` section (``.toml``; docs/model_language.md), a compiled
        :class:`~pkpd.models.user.UserModel`, or any model object or name. The file may hold a ``[drug]``
        table: ``name`` (the library drug it is written for; checked) and ``routes`` (as below).
    routes
        Route label -> state name or CMT number of ``structure`` (e.g. ``{"po_er": "DEPOT_SLOW"}``),
        replacing those of the entry; routes not named keep the entry's CMT number. Overrides the file's
        ``[drug] routes``.

    Returns
    -------
    Drug
        The entry with ``structure`` set (``model`` holds the structure's name); its parameters, covariate
        effects, variability, notes and name (so its PD, MME factor and limits) are the library entry's.

    Raises
    ------
    ModelSpecError
        When the structure uses a parameter the entry does not supply (named, with the entry's parameters),
        declares a unit that differs from the entry's, has no output ``CP = STATE / PARAMETER``, when a route
        targets a state that does not receive doses, or when the entry's dosing parameters (``F<n>``,
        ``ALAG<n>``...) name a CMT the structure does not have.
    """
    from .library import get_drug

    drug = get_drug(drug) if isinstance(drug, str) else drug
    model, where, section = _load(structure)
    named = section.get("name")
    if named is not None and get_drug(str(named)).name != drug.name:
        raise ModelSpecError(f"{where} [drug]: name = {named!r}, but the structure is given for {drug.name}")

    # ---- parameters: the structure's symbols are the entry's parameters ------------------------------------
    entry = {p.name: p for p in drug.params}
    missing = [q for q in model.param_names if q not in entry]
    if missing:
        s = "s" if len(missing) > 1 else ""
        raise ModelSpecError(
            f"{where}: the structure uses parameter{s} {', '.join(missing)}, which the {drug.name} entry does not "
            f"supply; the entry defines {', '.join(entry)} (write the structure with these names)"
        )
    for q in model.params:
        if q.unit and entry[q.name].unit and _norm_unit(q.unit) != _norm_unit(entry[q.name].unit):
            raise ModelSpecError(
                f"{where}: parameter {q.name} is declared in {q.unit!r} but the {drug.name} entry "
                f"gives it in {entry[q.name].unit!r}"
            )
    n = model.n_cmt
    for name in entry:
        for pre in ("F", "ALAG", "R", "D"):
            if name.startswith(pre) and name[len(pre) :].isdigit() and int(name[len(pre) :]) > n:
                raise ModelSpecError(
                    f"{where}: the {drug.name} entry's dosing parameter {name} refers to CMT "
                    f"{name[len(pre) :]}, but the structure has {n} states "
                    f"({model.compartment_table()})"
                )
    if hasattr(model, "output_fns"):  # written in the language: outputs are expressions
        model = _adapt_outputs(model, where)

    # ---- routes ------------------------------------------------------------------------------------------
    given = dict(section.get("routes") or {})
    given.update(routes or {})
    out = dict(drug.routes)
    for label, target in given.items():
        if isinstance(target, str):
            if target not in model.compartments:
                raise ModelSpecError(
                    f"{where}: route {label!r} -> {target}, which is not a state ({model.compartment_table()})"
                )
            target = model.compartments.index(target) + 1
        out[str(label)] = target
    dosed = getattr(model, "dose_states", tuple(range(n)))
    for label, cmt in out.items():
        if not isinstance(cmt, int) or not 1 <= cmt <= n or cmt - 1 not in dosed:
            raise ModelSpecError(
                f"{where}: route {label!r} of {drug.name} doses into CMT {cmt!r}, which is not a state receiving "
                f"doses ({', '.join(f'{i + 1}={model.compartments[i]}' for i in dosed)}); list the states in the "
                "built-in model's CMT order or map the route, e.g. routes = { " + f'{label} = "STATE"' + " }"
            )
    note = f"structure written in the model language: {getattr(model, 'source', None) or model.name}"
    return dataclasses.replace(drug, model=model.name, structure=model, routes=out, notes=drug.notes + (note,))


def regimen_entry(name: str, structures: Mapping[str, Any] | None = None) -> Drug:
    """The drug entry a regimen simulation uses for ``name``: the library's, or with a hand-written structure.

    Parameters
    ----------
    name
        A library drug name or alias.
    structures
        Drug name -> structure (see :func:`with_structure`) or a ready :class:`~pkpd.drugs.Drug` of that
        name (e.g. from :func:`with_structure` with ``routes``). Drugs not named use the library entry
        unchanged.

    Returns
    -------
    Drug

    Raises
    ------
    ModelSpecError
        For an unknown drug name (also among the keys of ``structures``), a ``Drug`` given under another
        drug's name, the errors of :func:`with_structure`, and a structure that is not linear (the regimen
        simulator propagates every drug exactly with matrix exponentials).
    """
    from .library import get_drug

    drug = get_drug(name)
    if not structures:
        return drug
    chosen = None
    for key, value in structures.items():
        if get_drug(key).name == drug.name:
            chosen = value
    if chosen is None:
        return drug
    if isinstance(chosen, Drug):
        if chosen.name != drug.name:
            raise ModelSpecError(f"structures[{drug.name!r}] is the entry of {chosen.name}")
        out = chosen
    else:
        out = with_structure(drug, chosen)
    model = out.structural_model()
    if not model.is_linear:
        why = getattr(model, "linear_reason", "") or "it has a nonlinear term"
        raise ModelSpecError(
            f"{drug.name}: structure {model.name} is integrated as an ODE ({why}); the regimen "
            "simulator propagates every drug exactly with matrix exponentials and needs a linear "
            "structure (simulate a nonlinear one alone with pkpd.simulate)"
        )
    return out
