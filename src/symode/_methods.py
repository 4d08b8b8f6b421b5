"""The catalogue of named explicit Runge-Kutta methods.

Every method is a module-level :class:`~symode.ButcherTableau`; :data:`TABLEAUS`
maps the names accepted by the solvers to them and :func:`get_tableau` resolves a
``method=`` argument. Rational coefficients are written as exact ``Fraction`` values; the
adaptive pairs give their embedded weights and ``b_err = b - b_embedded`` is formed exactly.
"""

from __future__ import annotations

from fractions import Fraction

from . import _dopri8
from ._implicit_methods import IMPLICIT_TABLEAUS
from ._tableau import ButcherTableau

__all__ = [
    "TABLEAUS",
    "get_tableau",
    "euler",
    "midpoint",
    "heun",
    "heun2",
    "heun3",
    "ralston",
    "rk4",
    "rk38",
    "adaptive_heun",
    "fehlberg2",
    "bosh3",
    "dopri5",
    "tsit5",
    "dopri8",
]


def _q(*values: str | int) -> tuple[Fraction, ...]:
    """Exact coefficients from strings such as ``"1/3"`` or ``"0.161"`` (decimals are exact too)."""
    return tuple(Fraction(v) for v in values)


def _minus(b, b_embedded) -> tuple[Fraction, ...]:
    """``b - b_embedded``, exactly."""
    assert len(b) == len(b_embedded)
    return tuple(Fraction(x) - Fraction(y) for x, y in zip(b, b_embedded))


def _poly(*coefficients) -> tuple[Fraction, ...]:
    """A polynomial as its coefficients from theta**0 up."""
    return tuple(Fraction(c) for c in coefficients)


def _mul(p, q) -> tuple[Fraction, ...]:
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return tuple(out)


def _dense_rows(polynomials, degree: int) -> tuple[tuple[Fraction, ...], ...]:
    """``b_dense`` rows (coefficients of theta**1..theta**degree) from polynomials with no constant term."""
    rows = []
    for p in polynomials:
        assert p[0] == 0 and len(p) <= degree + 1
        rows.append(tuple(p[1:]) + (Fraction(0),) * (degree + 1 - len(p)))
    return tuple(rows)


def _shampine_dense(b, d) -> tuple[tuple[Fraction, ...], ...]:
    """dopri5's continuous extension of order 4 (L. F. Shampine, Math. Comp. 46, 1986), as Hairer's
    DOPRI5 evaluates it: ``y_n + theta (r2 + (1 - theta)(r3 + theta (r4 + (1 - theta) r5)))`` with
    ``r2 = y_{n+1} - y_n``, ``r3 = h k_1 - r2``, ``r4 = r2 - h k_7 - r3`` and ``r5 = h sum_i d_i k_i``;
    expanded here into ``b_i(theta)``."""
    s = len(b)
    theta, one_minus = _poly(0, 1), _poly(1, -1)
    basis = (
        theta,
        _mul(theta, one_minus),
        _mul(_mul(theta, theta), one_minus),
        _mul(_mul(theta, theta), _mul(one_minus, one_minus)),
    )
    polys = []
    for i in range(s):
        r2 = Fraction(b[i])
        r3 = (1 if i == 0 else 0) - r2
        r4 = r2 - (1 if i == s - 1 else 0) - r3
        r5 = Fraction(d[i])
        total = [Fraction(0)] * 5
        for weight, poly in zip((r2, r3, r4, r5), basis):
            for k, c in enumerate(poly):
                total[k] += weight * c
        polys.append(tuple(total))
    return _dense_rows(polys, 4)


# --------------------------------------------------------------------------------------
# fixed-step methods

euler = ButcherTableau(
    "euler",
    c=_q(0),
    a=((),),
    b=_q(1),
    order=1,
    doc="Forward Euler method (L. Euler, Institutionum calculi integralis, 1768).",
)

midpoint = ButcherTableau(
    "midpoint",
    c=_q(0, "1/2"),
    a=((), _q("1/2")),
    b=_q(0, 1),
    order=2,
    doc="Explicit midpoint rule, 2nd order (C. Runge, Math. Ann. 46, 1895).",
)

heun = ButcherTableau(
    "heun",
    c=_q(0, 1),
    a=((), _q(1)),
    b=_q("1/2", "1/2"),
    order=2,
    doc="Heun's method (explicit trapezoidal rule), 2nd order (K. Heun, Z. Math. Phys. 45, 1900).",
)

heun2 = heun

heun3 = ButcherTableau(
    "heun3",
    c=_q(0, "1/3", "2/3"),
    a=((), _q("1/3"), _q(0, "2/3")),
    b=_q("1/4", 0, "3/4"),
    order=3,
    doc="Heun's third-order method (K. Heun, Z. Math. Phys. 45, 1900); torchdiffeq's 'heun3'.",
)

ralston = ButcherTableau(
    "ralston",
    c=_q(0, "2/3"),
    a=((), _q("2/3")),
    b=_q("1/4", "3/4"),
    order=2,
    doc="Ralston's 2nd-order method with minimal truncation-error bound (A. Ralston, Math. Comp. 16, 1962).",
)

rk4 = ButcherTableau(
    "rk4",
    c=_q(0, "1/2", "1/2", 1),
    a=((), _q("1/2"), _q(0, "1/2"), _q(0, 0, 1)),
    b=_q("1/6", "1/3", "1/3", "1/6"),
    order=4,
    doc="The classical 4th-order Runge-Kutta method (W. Kutta, Z. Math. Phys. 46, 1901).",
)

rk38 = ButcherTableau(
    "rk38",
    c=_q(0, "1/3", "2/3", 1),
    a=((), _q("1/3"), _q("-1/3", 1), _q(1, -1, 1)),
    b=_q("1/8", "3/8", "3/8", "1/8"),
    order=4,
    doc="Kutta's 3/8 rule, 4th order (W. Kutta, Z. Math. Phys. 46, 1901).",
)

# --------------------------------------------------------------------------------------
# adaptive pairs

adaptive_heun = ButcherTableau(
    "adaptive_heun",
    c=_q(0, 1),
    a=((), _q(1)),
    b=_q("1/2", "1/2"),
    order=2,
    b_err=_minus(_q("1/2", "1/2"), _q(1, 0)),
    error_order=1,
    doc="Heun-Euler 2(1) pair: Heun's trapezoidal method propagated, forward Euler embedded (K. Heun, 1900).",
)

# Fehlberg's RK1(2): the stage y0 + h(k1/256 + 255 k2/256) is the 1st-order solution, and
# k3 evaluated there gives the 2nd-order weights. As in torchdiffeq, the 2nd-order solution
# is propagated (local extrapolation) and the 1st-order one is the embedded estimator.
_FEHLBERG2_B = _q("1/512", "255/256", "1/512")
fehlberg2 = ButcherTableau(
    "fehlberg2",
    c=_q(0, "1/2", 1),
    a=((), _q("1/2"), _q("1/256", "255/256")),
    b=_FEHLBERG2_B,
    order=2,
    b_err=_minus(_FEHLBERG2_B, _q("1/256", "255/256", 0)),
    error_order=1,
    doc="Fehlberg's RK1(2) pair, propagating the 2nd-order solution (E. Fehlberg, NASA TR R-315, 1969).",
)

_BOSH3_B = _q("2/9", "1/3", "4/9", 0)
bosh3 = ButcherTableau(
    "bosh3",
    c=_q(0, "1/2", "3/4", 1),
    a=((), _q("1/2"), _q(0, "3/4"), _BOSH3_B[:3]),
    b=_BOSH3_B,
    order=3,
    b_err=_minus(_BOSH3_B, _q("7/24", "1/4", "1/3", "1/8")),
    error_order=2,
    doc="Bogacki-Shampine 3(2) pair, FSAL (P. Bogacki and L. F. Shampine, Appl. Math. Lett. 2, 1989).",
)

_DOPRI5_B = _q("35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84", 0)
dopri5 = ButcherTableau(
    "dopri5",
    c=_q(0, "1/5", "3/10", "4/5", "8/9", 1, 1),
    a=(
        (),
        _q("1/5"),
        _q("3/40", "9/40"),
        _q("44/45", "-56/15", "32/9"),
        _q("19372/6561", "-25360/2187", "64448/6561", "-212/729"),
        _q("9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"),
        _DOPRI5_B[:6],
    ),
    b=_DOPRI5_B,
    order=5,
    b_err=_minus(_DOPRI5_B, _q("5179/57600", 0, "7571/16695", "393/640", "-92097/339200", "187/2100", "1/40")),
    error_order=4,
    doc="Dormand-Prince 5(4) pair (RK5(4)7M), FSAL (J. R. Dormand and P. J. Prince, J. Comput. Appl. Math. 6, 1980).",
    b_dense=_shampine_dense(
        _DOPRI5_B,
        _q(
            "-12715105075/11282082432",
            0,
            "87487479700/32700410799",
            "-10690763975/1880347072",
            "701980252875/199316789632",
            "-1453857185/822651844",
            "69997945/29380423",
        ),
    ),
)

# Tsitouras' coefficients are not rational (they follow from c2..c5 and the simplifying
# assumptions); they are given to 30 significant digits.
_TSIT5_B = _q(
    "0.0964607668180652295181673131651",
    "1/100",
    "0.479889650414499574775249532291",
    "1.37900857410374189319227482186",
    "-3.29006951543608067990104758571",
    "2.32471052409977398241535591840",
    0,
)
_TSIT5_B_EMBEDDED = _q(
    "0.0946807557658394580747887625576",
    "0.00918356554034325309677636393665",
    "0.487770528424761570785564259963",
    "1.23429756693047898565510967388",
    "-2.70771234998352545488110997506",
    "1.86662841817058703575371939957",
    "1/66",
)
# Tsitouras' interpolant of order 4, as published (factored, 16-19 significant digits).
_T = _poly(0, 1)
_T2 = _mul(_T, _T)
_TSIT5_DENSE = _dense_rows(
    (
        _mul(
            _mul(_poly(0, "-1.0530884977290216"), _poly("-1.3299890189751412", 1)),
            _poly("0.7139816917074209", "-1.4364028541716351", 1),
        ),
        _mul(_mul(_poly("0.1017"), _T2), _poly("1.2949852507374631", "-2.1966568338249754", 1)),
        _mul(_mul(_poly("2.490627285651252793"), _T2), _poly("1.57803468208092486", "-2.38535645472061657", 1)),
        _mul(
            _mul(_poly("-16.54810288924490272"), _T2),
            _mul(_poly("-1.21712927295533244", 1), _poly("-0.61620406037800089", 1)),
        ),
        _mul(
            _mul(_poly("47.37952196281928122"), _T2),
            _mul(_poly("-1.203071208372362603", 1), _poly("-0.658047292653547382", 1)),
        ),
        _mul(_mul(_poly("-34.87065786149660974"), _T2), _mul(_poly("-1.2", 1), _poly("-0.666666666666666667", 1))),
        _mul(_mul(_poly("2.5"), _T2), _mul(_poly(-1, 1), _poly("-0.6", 1))),
    ),
    4,
)
tsit5 = ButcherTableau(
    "tsit5",
    c=_q(0, "0.161", "0.327", "0.9", "0.980025540904509685729810286287", 1, 1),
    a=(
        (),
        _q("0.161"),
        _q("-0.00848065549235698854442687425023", "0.335480655492356988544426874250"),
        _q("2.89715305710549343213043259419", "-6.35944848997507484314815991238", "4.36229543286958141101772731819"),
        _q(
            "5.32586482843925660442887792084",
            "-11.7488835640628278777471703398",
            "7.49553934288983620830460478456",
            "-0.0924950663617552492565020793321",
        ),
        _q(
            "5.86145544294642002865925148698",
            "-12.9209693178471092917061186818",
            "8.15936789857615864318040079454",
            "-0.0715849732814009972245305425258",
            "-0.0282690503940683829090030572127",
        ),
        _TSIT5_B[:6],
    ),
    b=_TSIT5_B,
    order=5,
    b_err=_minus(_TSIT5_B, _TSIT5_B_EMBEDDED),
    error_order=4,
    doc="Tsitouras 5(4) pair, FSAL (Ch. Tsitouras, Comput. Math. Appl. 62, 2011).",
    b_dense=_TSIT5_DENSE,
)

dopri8 = ButcherTableau(
    "dopri8",
    c=_dopri8.C,
    a=_dopri8.A,
    b=_dopri8.B,
    order=8,
    b_err=_minus(_dopri8.B, _dopri8.B_EMBEDDED),
    error_order=7,
    doc="Prince-Dormand 8(7) pair RK8(7)13M, 13 stages (P. J. Prince and J. R. Dormand, "
    "J. Comput. Appl. Math. 7, 1981); torchdiffeq's 'dopri8'.",
    b_dense=_dopri8.B_DENSE,
)

# --------------------------------------------------------------------------------------
# lookup

TABLEAUS: dict[str, ButcherTableau] = {
    "euler": euler,
    "midpoint": midpoint,
    "heun": heun,
    "heun2": heun2,
    "heun3": heun3,
    "ralston": ralston,
    "rk4": rk4,
    "rk38": rk38,
    "adaptive_heun": adaptive_heun,
    "fehlberg2": fehlberg2,
    "bosh3": bosh3,
    "dopri5": dopri5,
    "tsit5": tsit5,
    "dopri8": dopri8,
    **IMPLICIT_TABLEAUS,
}
_BY_LOWER_NAME = {name.lower(): tableau for name, tableau in TABLEAUS.items()}


#: the methods of symode.odeint that are not Runge-Kutta methods (multistep, or scipy's)
_ODEINT_ONLY = ("explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver")


def get_tableau(method: str | ButcherTableau | None) -> ButcherTableau:
    """Resolve a ``method=`` argument: a ``ButcherTableau`` is returned unchanged, a string
    is looked up (case-insensitively) in :data:`TABLEAUS`, ``None`` is ``dopri5`` (as in
    torchdiffeq)."""
    if method is None:
        return dopri5
    if isinstance(method, ButcherTableau):
        return method
    if isinstance(method, str):
        try:
            return _BY_LOWER_NAME[method.lower()]
        except KeyError:
            if method in _ODEINT_ONLY:
                raise ValueError(
                    f"method {method!r} is not a Runge-Kutta method: it is available through symode.odeint "
                    f"(torchdiffeq's API) only; the Runge-Kutta methods are {', '.join(sorted(TABLEAUS))}"
                ) from None
            raise ValueError(
                f"unknown method {method!r}; available methods: {', '.join(sorted(TABLEAUS))} "
                f"(or pass a symode.ButcherTableau; symode.odeint also takes {', '.join(_ODEINT_ONLY)})"
            ) from None
    raise TypeError(f"method must be a method name (str) or a ButcherTableau, got {type(method).__name__}: {method!r}")
