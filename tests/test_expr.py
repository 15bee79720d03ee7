"""Tests of the safe parameter-expression parser/evaluator (pkpd.expr)."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pkpd.errors import ExpressionError  # noqa: E402
from pkpd.expr import (  # noqa: E402
    compile_expression,
    compile_parameter_block,
    evaluate_parameter_block,
    referenced_columns,
)

XPS = pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])


def ev(src, xp=np, **env):
    return compile_expression(src).evaluate(env, xp)


@XPS
@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("2 ** 3 ** 2", 512.0),
        ("-2 ** 2", -4.0),
        ("+3 - -2", 5.0),
        ("7 / 2", 3.5),
        ("1e-3 * 2", 0.002),
        ("2 ** -1", 0.5),
        ("2 * pi", 2 * np.pi),
        ("1.2 * (3 > 2) + (3 < 2)", 1.2),
        ("1 if 0 < 0.5 < 1 else 2", 1.0),
        ("1 if 0 < 1.5 < 1 else 2", 2.0),
        ("(1 < 2) and not (2 < 1)", 1.0),
        ("(1 > 2) or (2 != 2)", 0.0),
        ("2 >= 2", 1.0),
        ("2 <= 1", 0.0),
    ],
)
def test_arithmetic_and_precedence(xp, src, expected):
    expr = compile_expression(src)
    assert expr.is_constant and expr.names == frozenset()
    np.testing.assert_allclose(float(expr.evaluate({}, xp)), expected, rtol=1e-15)


def test_numbers_are_constant_expressions():
    for value in (20, 0.5, -3):
        expr = compile_expression(value)
        assert expr.is_constant
        assert float(expr.evaluate({})) == value
    assert compile_expression("42").source == "42"


@XPS
def test_allometric_clearance_matches_numpy(xp):
    wt = np.array([3.5, 20.0, 55.5, 70.0, 81.3, 140.0])
    expr = compile_expression("1.1*(WT/70)**0.75", name="CL")
    assert expr.names == frozenset({"WT"}) and not expr.is_constant
    got = np.asarray(expr.evaluate({"WT": xp.asarray(wt)}, xp))
    np.testing.assert_allclose(got, 1.1 * (wt / 70) ** 0.75, rtol=1e-15)


@XPS
def test_conditional_and_comparisons_in_arithmetic(xp):
    mode = xp.asarray([1, 2, 2, 0])
    dur2 = xp.asarray([0.5, 1.5, 2.5, 3.5])
    got = ev("DUR2 if MODE == 2 else 0", xp, MODE=mode, DUR2=dur2)
    np.testing.assert_array_equal(np.asarray(got), [0.0, 1.5, 2.5, 0.0])
    got = ev("10 * (1 + 1.2*(SEX==1))", xp, SEX=xp.asarray([0, 1]))
    np.testing.assert_allclose(np.asarray(got), [10.0, 22.0], rtol=1e-15)
    got = ev("1 if 0 < X <= 1 and not X == 0.5 else -1", xp, X=xp.asarray([-1.0, 0.5, 0.7, 1.0, 2.0]))
    np.testing.assert_array_equal(np.asarray(got), [-1, -1, 1, 1, -1])
    # a number used as a condition is true when non-zero
    got = ev("where(FLAG, 3, 4)", xp, FLAG=xp.asarray([0.0, 2.0]))
    np.testing.assert_array_equal(np.asarray(got), [4.0, 3.0])
    got = ev("(A < 1) or (A > 3)", xp, A=xp.asarray([0.0, 2.0, 4.0]))
    np.testing.assert_array_equal(np.asarray(got), [1.0, 0.0, 1.0])


@XPS
def test_functions(xp):
    x = np.array([0.25, 1.0, 2.7, 9.0])
    env = {"X": xp.asarray(x)}
    cases = {
        "exp(X)": np.exp(x),
        "log(X)": np.log(x),
        "log10(X)": np.log10(x),
        "sqrt(X)": np.sqrt(x),
        "abs(-X)": x,
        "floor(X)": np.floor(x),
        "ceil(X)": np.ceil(x),
        "min(X, 2)": np.minimum(x, 2),
        "max(X, 2)": np.maximum(x, 2),
        "pow(X, 1.5)": x**1.5,
        "where(X > 1, X, -X)": np.where(x > 1, x, -x),
        "exp(log(X) * 2)": x**2,
    }
    for src, want in cases.items():
        np.testing.assert_allclose(np.asarray(compile_expression(src).evaluate(env, xp)), want, rtol=1e-14)


def test_unknown_name_at_evaluation():
    expr = compile_expression("CL / V", name="KE")
    with pytest.raises(ExpressionError, match=r"parameter KE: unknown name V"):
        expr.evaluate({"CL": 1.0})


def test_names_are_case_sensitive_and_functions_are_not_names():
    expr = compile_expression("wt + WT + exp(CRCL) + LAGT * DUR2 + exp")
    assert expr.names == frozenset({"wt", "WT", "CRCL", "LAGT", "DUR2", "exp"})


def test_jit_vmap_and_grad():
    block = compile_parameter_block({"KE": "CL/V", "CL": "1.1*(WT/70)**0.75", "V": "20 * WT/70"})

    def ke(wt):
        return evaluate_parameter_block(block, {"WT": wt}, jnp)["KE"]

    wt = jnp.asarray([10.0, 70.0, 95.0])
    want = 1.1 * (wt / 70) ** 0.75 / (20 * wt / 70)
    np.testing.assert_allclose(jax.jit(ke)(wt), want, rtol=1e-14)
    np.testing.assert_allclose(jax.vmap(ke)(wt), want, rtol=1e-14)

    cl = compile_expression("1.1*(WT/70)**0.75 if WT > 0 else 0")
    dcl = jax.grad(lambda w: cl.evaluate({"WT": w}, jnp))
    for w in (10.0, 70.0, 95.0):
        np.testing.assert_allclose(dcl(w), 1.1 * 0.75 * (w / 70) ** -0.25 / 70, rtol=1e-13)
    dcl_jit = jax.jit(jax.vmap(dcl))(wt)
    np.testing.assert_allclose(dcl_jit, 1.1 * 0.75 * (wt / 70) ** -0.25 / 70, rtol=1e-13)


def test_block_dependency_order_and_evaluation():
    block = compile_parameter_block({"KE": "CL/V", "CL": "1.1*(WT/70)**0.75", "V": 20, "K0": 0.3})
    order = list(block)
    assert order.index("CL") < order.index("KE") and order.index("V") < order.index("KE")
    assert set(order) == {"KE", "CL", "V", "K0"}
    assert referenced_columns(block) == {"WT"}
    wt = np.array([50.0, 70.0, 90.0])
    out = evaluate_parameter_block(block, {"WT": wt, "ID": np.array([1, 2, 3])})
    np.testing.assert_allclose(out["CL"], 1.1 * (wt / 70) ** 0.75, rtol=1e-15)
    np.testing.assert_allclose(out["KE"], 1.1 * (wt / 70) ** 0.75 / 20, rtol=1e-15)
    for key in block:  # constants broadcast to the columns' shape
        assert np.shape(out[key]) == (3,)
    np.testing.assert_array_equal(out["V"], [20.0, 20.0, 20.0])
    # no column arrays: scalars
    scalar = evaluate_parameter_block(block, {"WT": 70.0})
    assert np.shape(scalar["V"]) == () and float(scalar["CL"]) == pytest.approx(1.1)


def test_chain_order_keeps_spec_order_when_independent():
    block = compile_parameter_block({"D": "C + 1", "C": "B + 1", "B": "A + 1", "A": 1, "Z": 5})
    assert list(block) == ["A", "B", "C", "D", "Z"]
    out = evaluate_parameter_block(block, {})
    assert float(out["D"]) == 4.0


def test_parameter_shadows_column():
    block = compile_parameter_block({"WT": "70", "CL": "WT / 7"})
    assert referenced_columns(block) == set()
    out = evaluate_parameter_block(block, {"WT": np.array([1.0, 2.0])})
    np.testing.assert_array_equal(out["CL"], [10.0, 10.0])


def test_missing_column_message():
    block = compile_parameter_block({"CL": "1.1*(WT/70)**0.75"})
    with pytest.raises(
        ExpressionError, match="parameter CL references WT, which is neither a dataset column nor a parameter"
    ):
        evaluate_parameter_block(block, {"AGE": np.array([30.0])})


def test_cycles_and_self_reference():
    with pytest.raises(ExpressionError, match=r"cycle: (A -> B -> A|B -> A -> B)"):
        compile_parameter_block({"A": "B", "B": "A*2"})
    with pytest.raises(ExpressionError, match=r"cycle: A -> B -> C -> A"):
        compile_parameter_block({"A": "B + 1", "B": "C", "C": "exp(A)", "D": 1})
    with pytest.raises(ExpressionError, match="parameter CL references itself"):
        compile_parameter_block({"CL": "CL * 2"})
    for bad in ("_X", "pi", "1A", "A B"):
        with pytest.raises(ExpressionError, match="invalid parameter name"):
            compile_parameter_block({bad: 1})


@pytest.mark.parametrize(
    ("src", "match"),
    [
        ("__import__('os').system('x')", r"(?s)parameter P: .*attribute access.*__import__"),
        ("__import__('os')", r"function '__import__' not allowed"),
        ("().__class__", r"attribute access not allowed: '\(\)\.__class__'"),
        ("WT.real", r"attribute access not allowed: 'WT\.real'"),
        ("open('f')", r"function 'open' not allowed \(allowed: abs, ceil"),
        ("WT(2)", r"function 'WT' not allowed"),
        ("exp(x=1)", r"keyword arguments not allowed in call to exp\(\)"),
        ("exp(*A)", r"starred arguments not allowed"),
        ("exp(1, 2)", r"exp\(\) takes 1 argument, got 2"),
        ("where(1, 2)", r"where\(\) takes 3 arguments, got 2"),
        ("[1][0]", r"subscripts/indexing not allowed"),
        ("A[0]", r"subscripts/indexing not allowed: 'A\[0\]'"),
        ("lambda: 1", r"lambda not allowed"),
        ("[x for x in A]", r"comprehensions not allowed"),
        ("sum(x for x in A)", r"function 'sum' not allowed"),
        ("'abc'", r"strings not allowed: \"'abc'\""),
        ("f'{A}'", r"f-strings not allowed"),
        ("b'x'", r"bytes not allowed"),
        ("(A := 1)", r"assignment expressions"),
        ("_secret + 1", r"names starting with '_' not allowed: '_secret'"),
        ("WT ^ 2", r"'\^' is not supported; use '\*\*'"),
        ("A // 2", r"'//' is not supported"),
        ("A % 2", r"'%' is not supported"),
        ("~A", r"'~' not allowed"),
        ("A is None", r"comparison 'Is' not allowed"),
        ("A in B", r"comparison 'In' not allowed"),
        ("True", r"literal True not allowed"),
        ("1j", r"literal 1j not allowed"),
        ("(1, 2)", r"tuples not allowed"),
        ("", r"parameter P: empty expression"),
        ("   ", r"empty expression"),
        ("1 +", r"parameter P: syntax error at end of expression: invalid syntax"),
        ("1 2", r"syntax error at column 3: invalid syntax"),
        ("WT * (2", r"syntax error.*'\(' was never closed"),
        ("1 + " * 600 + "1", r"2401 characters long \(limit 2000\)"),
    ],
)
def test_rejections(src, match):
    with pytest.raises(ExpressionError, match=match):
        compile_expression(src, name="P")


def test_rejection_reports_column_and_source():
    msg = r"parameter CL: attribute access not allowed: 'WT\.x' \(column 5 of '1 \+ WT\.x'\)"
    with pytest.raises(ExpressionError, match=msg):
        compile_expression("1 + WT.x", name="CL")
    with pytest.raises(ExpressionError, match=r"^strings not allowed"):
        compile_expression("'abc'")


def test_rejects_non_numeric_values_and_deep_nesting():
    for bad in (True, None, [1], float("nan"), float("inf")):
        with pytest.raises(ExpressionError, match="parameter Q: "):
            compile_expression(bad, name="Q")
    with pytest.raises(ExpressionError):
        compile_expression("-" * 1990 + "1")
    with pytest.raises(ExpressionError):
        compile_expression("(" * 300 + "1" + ")" * 300)


def test_no_eval_of_user_text(monkeypatch):
    import builtins

    def boom(*a, **k):
        raise AssertionError("eval/exec must not be used")

    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    assert float(ev("1 + WT", WT=2.0)) == 3.0
