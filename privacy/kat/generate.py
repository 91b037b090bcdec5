#!/usr/bin/env python3
"""Known answers for cohort-privacy's accountant, computed with Google's dp-accounting.

Run from the repository root:

    pip install dp-accounting==0.6.0
    python3 privacy/kat/generate.py > privacy/kat/cases.json

and commit the output. `privacy/tests/kat.rs` checks that the Rust accountant agrees within 1%
relative on every case.

Sections:

- "gaussian": (noise multiplier z, Poisson sampling rate q, rounds T, delta) -> epsilon, from
  dp-accounting's RdpAccountant on PoissonSampledDpEvent(q, GaussianDpEvent(z)) composed T times
  (GaussianDpEvent alone when q = 1). Entirely dp-accounting's code: the independent answer.
- "inverse": (target epsilon, q, T, delta) -> the noise multiplier dp-accounting's
  calibrate_dp_mechanism finds for the same event.
- "discrete_gaussian": central mode's accounting. Unsampled (q = 1) the discrete Gaussian's RDP
  is the Gaussian's, so dp-accounting's GaussianDpEvent gives the answer. Sampled (q < 1), the
  general subsampling bound of Zhu & Wang 2019 applied to alpha / (2 z^2) at integer orders,
  computed below in numpy/scipy, then dp-accounting's compute_epsilon for the conversion.
- "distributed": distributed mode's accounting, the sum of discrete Gaussian shares (Kairouz,
  Liu, Steinke 2021, Proposition 14, with tau from Theorem 1), sampled through Zhu & Wang likewise,
  converted by dp-accounting's compute_epsilon.

The Zhu-Wang and Kairouz formulas are transcribed here from the papers, independently of the Rust
code; as a check on the transcription, the script asserts that the Zhu-Wang bound applied to the
Gaussian's RDP is never below dp-accounting's exact sampled-Gaussian RDP, and that with tau = 0
the distributed formula reduces to dp-accounting's Gaussian.
"""

import json
import math
import sys

import dp_accounting
import numpy as np
from dp_accounting import mechanism_calibration
from absl import logging
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib
from scipy import special

# dp-accounting warns for every fractional order whose series it gives up on (small z, large q);
# those orders are excluded from the minimum, here and in the Rust accountant alike.
logging.set_verbosity(logging.ERROR)

ORDERS = list(rdp_lib.DEFAULT_RDP_ORDERS)


def gaussian_event(z, q):
    event = dp_accounting.GaussianDpEvent(z)
    if q < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    return event


def gaussian_epsilon(z, q, rounds, delta):
    accountant = dp_accounting.rdp.RdpAccountant(ORDERS)
    accountant.compose(gaussian_event(z, q), rounds)
    return accountant.get_epsilon(delta)


def zhu_wang(alpha, q, eps):
    """Zhu & Wang 2019, general upper bound for Poisson subsampling, integer alpha >= 2."""
    a = [0.0, eps(2)]
    b = [(1 - q) ** (alpha - 1) * (alpha * q - q + 1), special.comb(alpha, 2) * q**2 * (1 - q) ** (alpha - 2)]
    for l in range(3, alpha + 1):
        log_comb = special.gammaln(alpha + 1) - special.gammaln(l + 1) - special.gammaln(alpha - l + 1)
        a.append((l - 1) * eps(l) + log_comb + (alpha - l) * math.log1p(-q) + l * math.log(q))
        b.append(3.0)
    return special.logsumexp(a=a, b=b) / (alpha - 1)


def curve(eps, q):
    """RDP per order: eps itself when q = 1, else min(Zhu-Wang, eps) at integer orders and eps at
    fractional ones (Zhu-Wang does not apply there; subsampling never increases RDP, by the joint
    convexity of exp((alpha - 1) D_alpha), so the unamplified value is a bound)."""
    out = []
    for order in ORDERS:
        if q == 1.0:
            out.append(eps(order))
        elif float(order).is_integer() and order >= 2:
            alpha = int(order)
            out.append(min(zhu_wang(alpha, q, eps), eps(alpha)))
        else:
            out.append(eps(order))
    return np.array(out)


def epsilon_of(rdp, rounds, delta):
    return rdp_lib.compute_epsilon(ORDERS, rdp * rounds, delta)[0]


def tau(sigma, shares):
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, shares))


def ddg_eps(l2_scale, l1_scale, t, dim):
    def eps(alpha):
        first = alpha / 2.0 * l2_scale**2 + t * dim
        second = alpha / 2.0 * (l2_scale**2 + 2.0 * l1_scale * t + t**2 * dim)
        third = alpha / 2.0 * (l2_scale + math.sqrt(dim) * t) ** 2
        return min(first, second, third)

    return eps


def main():
    out = {
        "generator": "privacy/kat/generate.py",
        "dp_accounting_version": getattr(dp_accounting, "__version__", "0.6.0"),
        "orders": ORDERS,
        "gaussian": [],
        "inverse": [],
        "discrete_gaussian": [],
        "distributed": [],
    }

    for z in [0.5, 0.8, 1.0, 1.1, 1.5, 2.0, 4.0, 10.0]:
        for q in [1.0, 0.2, 0.05, 0.01, 0.001]:
            for rounds in [1, 10, 100, 1000, 10000]:
                for delta in [1e-5, 1e-10]:
                    eps = gaussian_epsilon(z, q, rounds, delta)
                    if math.isfinite(eps):
                        out["gaussian"].append(
                            {"noise_multiplier": z, "sampling_rate": q, "rounds": rounds, "delta": delta, "epsilon": eps}
                        )

    for target in [0.5, 1.0, 3.0, 8.0]:
        for q, rounds in [(1.0, 1), (1.0, 100), (0.01, 1000), (0.001, 10000), (0.1, 500)]:
            delta = 1e-6
            z = mechanism_calibration.calibrate_dp_mechanism(
                lambda: dp_accounting.rdp.RdpAccountant(ORDERS),
                lambda z, q=q, rounds=rounds: dp_accounting.SelfComposedDpEvent(gaussian_event(z, q), rounds),
                target,
                delta,
                mechanism_calibration.LowerEndpointAndGuess(0.01, 1.0),
                tol=1e-7,
            )
            out["inverse"].append(
                {"epsilon": target, "sampling_rate": q, "rounds": rounds, "delta": delta, "noise_multiplier": z}
            )

    for z in [0.7, 1.0, 2.0, 5.0]:
        for q in [1.0, 0.1, 0.01]:
            for rounds in [1, 100, 10000]:
                delta = 1e-6
                rdp = curve(lambda a, z=z: a / (2.0 * z * z), q)
                eps = epsilon_of(rdp, rounds, delta)
                if q == 1.0:
                    reference = gaussian_epsilon(z, 1.0, rounds, delta)
                    assert abs(eps - reference) <= 1e-9 * max(1.0, reference), (eps, reference)
                else:
                    # The general bound is looser than the exact sampled Gaussian, never tighter.
                    exact = rdp_lib._compute_rdp_poisson_subsampled_gaussian(q, z, ORDERS)
                    for order, general, tight in zip(ORDERS, rdp, exact):
                        if math.isfinite(general) and math.isfinite(tight):
                            assert general >= tight * (1 - 1e-9), (z, q, order, general, tight)
                if math.isfinite(eps):
                    out["discrete_gaussian"].append(
                        {"noise_multiplier": z, "sampling_rate": q, "rounds": rounds, "delta": delta, "epsilon": eps}
                    )

    # Distributed: integer-grid sensitivities and local sigma for a few pipeline shapes.
    for l2, dim, sigma, min_shares, max_shares in [
        (5723.0, 2**20, 190.8, 900, 1000),
        (1515.0, 2**14, 55.0, 90, 100),
        (4.0, 64, 0.8, 20, 25),  # small sigma: tau matters
        (300.0, 4096, 2.0, 500, 600),
    ]:
        l1 = l2 * min(math.sqrt(dim), l2)
        central = math.sqrt(min_shares) * sigma
        l2_scale, l1_scale = l2 / central, l1 / central
        t = tau(sigma, max_shares)
        for q in [1.0, 0.05]:
            for rounds in [1, 100, 2000]:
                delta = 1e-8
                rdp = curve(ddg_eps(l2_scale, l1_scale, t, dim), q)
                eps = epsilon_of(rdp, rounds, delta)
                if t == 0.0 and q == 1.0:
                    reference = gaussian_epsilon(1.0 / l2_scale, 1.0, rounds, delta)
                    assert abs(eps - reference) <= 1e-9 * max(1.0, reference)
                if math.isfinite(eps):
                    out["distributed"].append(
                        {
                            "l2": l2,
                            "l1": l1,
                            "sigma": sigma,
                            "min_shares": min_shares,
                            "max_shares": max_shares,
                            "dim": dim,
                            "sampling_rate": q,
                            "rounds": rounds,
                            "delta": delta,
                            "tau": t,
                            "epsilon": eps,
                        }
                    )

    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
