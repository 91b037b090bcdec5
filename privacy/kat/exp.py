#!/usr/bin/env python3
"""Known answers for the sampler's rigorous exp bounds (privacy/src/sampler/interval.rs).

Prints exp(-a/b) to 60 significant digits, truncated, as (digits, exponent) with the value
0.<digits> x 10^exponent, using Python's decimal module at 100 digits (independent of the
Rust code). Run: python3 privacy/kat/exp.py
"""

from decimal import Decimal, getcontext, ROUND_FLOOR

getcontext().prec = 100

for a, b in [(1, 1), (1, 3), (41, 2), (1234, 1000)]:
    v = (-(Decimal(a) / Decimal(b))).exp()
    exponent = v.adjusted() + 1  # v = 0.d1d2... x 10^exponent
    digits = (v.scaleb(60 - exponent)).to_integral_value(rounding=ROUND_FLOOR)
    print(f"({a}, {b}, \"{digits}\", {exponent}),")
