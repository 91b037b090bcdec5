//! Choosing the neighbour count k and the Shamir threshold t, as Google's fcp SecAgg+ does
//! (`fcp/secagg/server/graph_parameter_finder.cc`, semi-honest "curious server" class), for
//! 40-bit security and 20-bit correctness.
//!
//! # Model
//!
//! n clients are placed uniformly at random on a Harary graph H(k, n) ([`super::graph`]). At
//! most A = ⌊adv·n⌋ of them are adversarial (colluding with the server) and at most
//! D = ⌊drop·n⌋ drop out; which ones is independent of the placement. The finder tries
//! k = 2, 4, 6, … and accepts the first k for which a threshold t exists such that each of
//! three bad events has small probability:
//!
//! 1. **Disconnection** (security). If the graph of honest survivors falls apart, the server
//!    learns partial sums. Cutting H(k, n) needs two disjoint runs of k/2 consecutive removed
//!    positions; a union bound over the n·(n − k − 1)/2 pairs of runs, each fully removed with
//!    probability (A + D)! (n − k)! / (n! (A + D − k)!) (k of the A + D bad clients land on
//!    those positions), must be below 2^-41.
//! 2. **Too many adversarial neighbours** (security). A client's k neighbours are a uniform
//!    k-subset of the others, so its number of adversarial neighbours is hypergeometric
//!    H(n, A, k). t1 is the smallest value with Pr\[X > t1\] ≤ 2^-41 / n (a union bound over
//!    clients), so t − 1 ≥ t1 adversarial shares never suffice.
//! 3. **Too few surviving neighbours** (correctness). With at least S = ⌈(1 − drop)·n⌉
//!    survivors, the surviving neighbours of a client are hypergeometric H(n, S, k); t2 is the
//!    largest value with Pr\[Y < t2\] ≤ 2^-20 / n, so every client keeps t survivors.
//!
//! The split of the 40-bit budget over events 1 and 2 is why each uses 41 bits. Parameters exist
//! when t1 < t2, and fcp (and we) take t = max(t1 + 1, 2), the smallest safe threshold, which
//! keeps reconstruction cheap. Probabilities are computed in log space with `ln Γ` (Lanczos) and
//! the hypergeometric tails by fcp's recurrences, so the results match fcp's tables (for
//! adv = 0.05, drop = 0.10: k = 36, t = 19 at n = 1,000; k = 46, t = 23 at n = 100,000).
//!
//! When no k < n − 1 works, the round uses the complete graph, where the Shamir threshold is the
//! round quorum. fcp uses t = q_min = max(⌊n/2⌋ + 1, ⌈(1 − drop)·n⌉) and requires it to exceed the
//! adversarial count ⌈adv·n⌉ (semi-honest) or ⌈(n + adv·n)/2⌉ (semi-malicious). We keep that for
//! the semi-malicious class; for the semi-honest one t = ⌈(1 − drop)·n⌉ (above the colluders): the
//! majority term protects only against a server that lies about dropouts, and with it an
//! over-selected small cohort (dropout above 1/2, cut-off at n/2) could never reach its quorum.
//!
//! **At least two colluders** ([`MIN_COLLUDERS`]). fcp's model assumes ⌊adv·n⌋ adversaries,
//! which is 0 or 1 below n = 40 for adv = 0.05, so ported exactly it returns k = 2, t = 2 for
//! 4 ≤ n < 20 and t = 2 up to n ≈ 30. Two colluding neighbours of u then hold both of u's
//! shares after R1, and at k = 2 one colluder plus one genuine dropout leave u with no honest
//! surviving neighbour, so an honest-but-curious server learns x_u
//! (`aggregation/tests/collusion.rs`). This finder therefore assumes max(⌊adv·n⌋, 2)
//! adversaries in all three events and in the complete-graph bound, which gives t ≥ 3 at every
//! n and k = 4, t = 3 for 10 ≤ n < 20 with the defaults; where no Harary graph passes, the
//! complete graph with t = q_min is used (n < 10 with the defaults). Above n = 40 (adv = 0.05)
//! the results are fcp's.
//!
//! [`AdversaryClass::SemiMalicious`] is fcp's stricter class for a server that may lie about
//! dropouts (our active model); it raises t and reproduces fcp's table for that class too.
//!
//! k counts neighbours other than the client itself; a client splits its secrets into k + 1
//! shares (one kept), which is fcp's "degree + 1" self-edge.

use thiserror::Error;

/// fcp's statistical security parameter (bits).
pub const SECURITY_BITS: f64 = 40.0;

/// fcp's statistical correctness parameter (bits).
pub const CORRECTNESS_BITS: f64 = 20.0;

/// Largest cohort the finder accepts (as fcp).
pub const MAX_CLIENTS: u32 = 1_000_000;

/// The fewest colluding clients the finder assumes, whatever ⌊adv·n⌋ is: with fewer, two
/// colluding neighbours (or one colluder and one dropout at k = 2) unmask a client.
pub const MIN_COLLUDERS: f64 = 2.0;

/// Guards floating-point rounding in the secure direction (fcp's `kSmall`).
const SMALL: f64 = 1e-14;

/// The neighbour graph and threshold of one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphParams {
    /// Neighbours per client, k (even); n − 1 for the complete graph.
    pub neighbours: u32,
    /// Shamir threshold t: shares needed to reconstruct a client's secrets.
    pub threshold: u32,
    /// Whether the complete graph is used (no Harary parameters exist for this n).
    pub complete: bool,
}

/// Why parameters could not be chosen.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ParamsError {
    /// Fewer than 3 clients: secure aggregation of 1 or 2 inputs reveals them.
    #[error("a SecAgg round needs at least 3 clients, got {n}; select a larger cohort")]
    TooFewClients {
        /// The cohort size.
        n: u32,
    },
    /// More clients than the finder supports.
    #[error(
        "at most {MAX_CLIENTS} clients per SecAgg round are supported, got {n}; split the cohort"
    )]
    TooManyClients {
        /// The cohort size.
        n: u32,
    },
    /// The adversarial fraction is not in [0, 1).
    #[error(
        "the adversarial client fraction must be in [0, 1), got {value}; fix the round configuration"
    )]
    AdversarialOutOfRange {
        /// The value given.
        value: f64,
    },
    /// The dropout fraction is not in [0, 1).
    #[error("the dropout fraction must be in [0, 1), got {value}; fix the round configuration")]
    DropoutOutOfRange {
        /// The value given.
        value: f64,
    },
    /// A Harary graph with this k may fall apart with the assumed colluders and dropouts.
    #[error(
        "a neighbour graph with k = {k} for n = {n} clients is not secure for this client's \
         assumed adversarial and dropout fractions; the round is refused"
    )]
    SparseGraph {
        /// The cohort size.
        n: u32,
        /// The neighbour count.
        k: u32,
    },
    /// No parameters give the required security for these fractions.
    #[error(
        "no secure SecAgg+ parameters exist for n = {n}, adversarial fraction {adversarial} and \
         dropout fraction {dropout}; the semi-honest model needs adversarial + dropout <= 0.9 and \
         a complete-graph quorum above the adversarial count; lower the assumed fractions or \
         grow the cohort"
    )]
    Infeasible {
        /// The cohort size.
        n: u32,
        /// The adversarial fraction.
        adversarial: f64,
        /// The dropout fraction.
        dropout: f64,
    },
}

/// The server's power in the threat model, as in fcp's `AdversaryClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdversaryClass {
    /// A curious server that follows the protocol (fcp's `CURIOUS_SERVER`): t must exceed the
    /// adversarial neighbours of any client. Cohort's default.
    SemiHonest,
    /// A server that may lie about dropouts (fcp's `SEMI_MALICIOUS_SERVER`), for the active
    /// model with signed keys and the consistency check: t must also keep the server from
    /// collecting both shares of one client, so t ≥ (t1 + k)/2 roughly, and the fractions must
    /// satisfy adv + 2·drop ≤ 0.9.
    SemiMalicious,
}

/// Chooses k and t for `n` clients, an assumed adversarial fraction and dropout fraction, in the
/// semi-honest model ([`AdversaryClass::SemiHonest`]).
///
/// # Errors
///
/// [`ParamsError::TooFewClients`] (n < 3), [`ParamsError::TooManyClients`],
/// [`ParamsError::AdversarialOutOfRange`], [`ParamsError::DropoutOutOfRange`],
/// [`ParamsError::Infeasible`].
pub fn choose_graph_params(
    n: u32,
    adversarial: f64,
    dropout: f64,
) -> Result<GraphParams, ParamsError> {
    choose_graph_params_for(n, adversarial, dropout, AdversaryClass::SemiHonest)
}

/// [`choose_graph_params`] for a given adversary class.
///
/// # Errors
///
/// As [`choose_graph_params`].
pub fn choose_graph_params_for(
    n: u32,
    adversarial: f64,
    dropout: f64,
    class: AdversaryClass,
) -> Result<GraphParams, ParamsError> {
    check_inputs(n, adversarial, dropout)?;
    let infeasible = ParamsError::Infeasible {
        n,
        adversarial,
        dropout,
    };
    let load = match class {
        AdversaryClass::SemiHonest => adversarial + dropout,
        AdversaryClass::SemiMalicious => adversarial + 2.0 * dropout,
    };
    if load > 0.9 {
        return Err(infeasible);
    }

    let finder = Finder {
        n: f64::from(n),
        adversarial,
        dropout,
        class,
    };
    let mut k = 2u32;
    while k < n - 1 {
        if let Some(t) = finder.threshold_for(k) {
            return Ok(GraphParams {
                neighbours: k,
                threshold: t,
                complete: false,
            });
        }
        k += 2;
    }

    // fcp's CheckFullGraphParameters: the quorum must exceed what the adversary holds.
    let n_f = f64::from(n);
    let colluders = (adversarial * n_f).ceil().max(MIN_COLLUDERS);
    let (threshold, adversary_bound) = match class {
        // A server that follows the protocol never asks for both shares of a client, so t only
        // has to exceed the colluders; no majority is needed, which keeps small over-selected
        // cohorts (dropout above 1/2) feasible.
        AdversaryClass::SemiHonest => (expected_survivors(n, dropout), colluders),
        AdversaryClass::SemiMalicious => (
            complete_graph_threshold(n, dropout),
            ((n_f + colluders) / 2.0).ceil(),
        ),
    };
    if threshold < 2 || f64::from(threshold) <= adversary_bound {
        return Err(infeasible);
    }
    Ok(GraphParams {
        neighbours: n - 1,
        threshold,
        complete: true,
    })
}

/// The least threshold a client accepts for a round of `n` clients and `k` neighbours (k = n − 1:
/// the complete graph), with its own assumed fractions: the client-side floor of issue 10.
/// A coordinator cannot weaken a round below what the client itself would choose by announcing
/// other parameters: a Harary graph must pass the disconnection bound and t must exceed the
/// adversarial neighbours (the finder's t1 + 1); the complete graph's t must exceed the colluders
/// (semi-honest) or ⌈(n + colluders)/2⌉ (semi-malicious).
///
/// # Errors
///
/// As [`choose_graph_params_for`], and [`ParamsError::SparseGraph`] when H(k, n) is not secure
/// for these fractions at any threshold.
pub fn minimum_threshold(
    n: u32,
    k: u32,
    adversarial: f64,
    dropout: f64,
    class: AdversaryClass,
) -> Result<u32, ParamsError> {
    check_inputs(n, adversarial, dropout)?;
    let n_f = f64::from(n);
    if k + 1 >= n {
        let colluders = (adversarial * n_f).ceil().max(MIN_COLLUDERS);
        let bound = match class {
            AdversaryClass::SemiHonest => colluders,
            AdversaryClass::SemiMalicious => ((n_f + colluders) / 2.0).ceil(),
        };
        return Ok(bound as u32 + 1);
    }
    let finder = Finder {
        n: n_f,
        adversarial,
        dropout,
        class,
    };
    finder
        .secure_threshold(k)
        .ok_or(ParamsError::SparseGraph { n, k })
}

fn check_inputs(n: u32, adversarial: f64, dropout: f64) -> Result<(), ParamsError> {
    if n < 3 {
        return Err(ParamsError::TooFewClients { n });
    }
    if n > MAX_CLIENTS {
        return Err(ParamsError::TooManyClients { n });
    }
    if !(0.0..1.0).contains(&adversarial) {
        return Err(ParamsError::AdversarialOutOfRange { value: adversarial });
    }
    if !(0.0..1.0).contains(&dropout) {
        return Err(ParamsError::DropoutOutOfRange { value: dropout });
    }
    Ok(())
}

/// The semi-malicious complete-graph threshold, equal to the round quorum:
/// max(⌊n/2⌋ + 1, ⌈(1 − drop)·n⌉). The semi-honest class uses ⌈(1 − drop)·n⌉.
pub fn complete_graph_threshold(n: u32, dropout: f64) -> u32 {
    (n / 2 + 1).max(expected_survivors(n, dropout))
}

/// The quorum q_min: the fewest survivors for which the sum is released,
/// max(t, ⌈(1 − drop)·n⌉).
pub fn min_survivors(n: u32, threshold: u32, dropout: f64) -> u32 {
    threshold.max(expected_survivors(n, dropout))
}

/// ⌈(1 − drop)·n⌉, ignoring floating-point noise below 1e-9 (so 0.9 × 1000 is 900, not 901).
fn expected_survivors(n: u32, dropout: f64) -> u32 {
    let exact = (1.0 - dropout.clamp(0.0, 1.0)) * f64::from(n);
    // In [0, n], so the cast cannot truncate.
    (exact - 1e-9).ceil().clamp(0.0, f64::from(n)) as u32
}

/// fcp's `HararyGraphParameterFinder`.
struct Finder {
    n: f64,
    adversarial: f64,
    dropout: f64,
    class: AdversaryClass,
}

impl Finder {
    /// The assumed number of adversarial clients: max(⌊adv·n⌋, [`MIN_COLLUDERS`]).
    fn max_adversarial(&self) -> f64 {
        ((self.adversarial + SMALL) * self.n)
            .floor()
            .max(MIN_COLLUDERS)
    }

    /// The security half of `threshold_for`: None when H(k, n) may fall apart, else the least
    /// secure threshold t1 + 1 (at least 2).
    fn secure_threshold(&self, k: u32) -> Option<u32> {
        let bits_per_event = SECURITY_BITS + 1.0;
        if self.log_prob_disconnected(k) >= -bits_per_event * std::f64::consts::LN_2 {
            return None;
        }
        let k = f64::from(k);
        let adversarial_neighbours = Hypergeometric::new(self.n, self.max_adversarial(), k);
        let security_tail = 2f64.powf(-bits_per_event) / self.n;
        let mut t1 = adversarial_neighbours.find_quantile(security_tail, true);
        if self.class == AdversaryClass::SemiMalicious {
            t1 = ((t1 + k - 1.25) / 2.0).ceil();
        }
        Some((t1 + 1.0).max(2.0) as u32)
    }

    /// The threshold if degree `k` is secure and correct (`CheckNumberOfNeighbors`).
    fn threshold_for(&self, k: u32) -> Option<u32> {
        let bits_per_event = SECURITY_BITS + 1.0;
        if self.log_prob_disconnected(k) >= -bits_per_event * std::f64::consts::LN_2 {
            return None;
        }
        let k = f64::from(k);
        let max_adversarial = self.max_adversarial();
        let min_surviving = ((1.0 - self.dropout - SMALL) * self.n).ceil();
        let adversarial_neighbours = Hypergeometric::new(self.n, max_adversarial, k);
        let surviving_neighbours = Hypergeometric::new(self.n, min_surviving, k);

        let security_tail = 2f64.powf(-bits_per_event) / self.n;
        let correctness_tail = 2f64.powf(-CORRECTNESS_BITS) / self.n;
        let mut t1 = adversarial_neighbours.find_quantile(security_tail, true);
        let mut t2 = surviving_neighbours.find_quantile(correctness_tail, false);
        if surviving_neighbours.cdf(t2) < correctness_tail {
            t2 += 1.0;
        }
        if self.class == AdversaryClass::SemiMalicious {
            // The server must not gather t shares of both kinds for one client:
            // Pr[2t − k adversarial] small, i.e. t1 + 1 ≥ (t1 + k)/2 + 1/2 (fcp's rounding).
            t1 = ((t1 + k - 1.25) / 2.0).ceil();
        }
        if t2 <= t1 {
            return None;
        }
        // t1 + 1 is a small non-negative integer (≤ k), so the cast is exact.
        Some((t1 + 1.0).max(2.0) as u32)
    }

    /// ln of a union bound on the probability that removing the adversarial and dropped
    /// clients disconnects H(k, n) (`LogProbOfDisconnectedRandomHarary`).
    fn log_prob_disconnected(&self, k: u32) -> f64 {
        let k = f64::from(k);
        let log_gap_pairs = self.n.ln() + (self.n - k - 1.0).ln() - std::f64::consts::LN_2;
        let max_adversarial = self.max_adversarial();
        let max_dropout = ((self.dropout + SMALL) * self.n).floor();
        let bad = max_adversarial + max_dropout;
        if k > bad {
            return f64::NEG_INFINITY;
        }
        log_gap_pairs + ln_gamma(bad + 1.0) + ln_gamma(self.n - k + 1.0)
            - ln_gamma(self.n + 1.0)
            - ln_gamma(bad - k + 1.0)
    }
}

/// The hypergeometric distribution: `sampled` draws without replacement from `total` items of
/// which `marked` are marked; the variable counts marked draws. A port of fcp's
/// `HypergeometricDistribution` (`distribution_utilities.cc`), including its outward rounding.
struct Hypergeometric {
    total: f64,
    marked: f64,
    sampled: f64,
}

impl Hypergeometric {
    fn new(total: f64, marked: f64, sampled: f64) -> Self {
        Self {
            total,
            marked,
            sampled,
        }
    }

    /// Pr[X = x] where X counts draws among `counted` items.
    fn pmf_impl(&self, x: f64, counted: f64) -> f64 {
        let (n, s) = (self.total, self.sampled);
        if x < 0.0 || x > s || x > counted {
            return 0.0;
        }
        if n + x < counted + s {
            return 0.0;
        }
        let lpmf = ln_gamma(s + 1.0)
            + ln_gamma(counted + 1.0)
            + ln_gamma(n - counted + 1.0)
            + ln_gamma(n - s + 1.0)
            - ln_gamma(x + 1.0)
            - ln_gamma(s - x + 1.0)
            - ln_gamma(counted - x + 1.0)
            - ln_gamma(n + 1.0)
            - ln_gamma(n - s - counted + x + 1.0);
        lpmf.exp()
    }

    /// Pr[X ≤ x].
    fn cdf(&self, x: f64) -> f64 {
        let x = x.floor();
        let mean = self.marked * self.sampled / self.total;
        if x > mean {
            1.0 - self.cdf_impl(self.sampled - x - 1.0, self.total - self.marked)
        } else {
            self.cdf_impl(x, self.marked)
        }
    }

    /// Pr[X ≤ x] for X counting draws among `counted`, summing the pmf downwards.
    fn cdf_impl(&self, mut x: f64, counted: f64) -> f64 {
        let (n, s) = (self.total, self.sampled);
        let mut pmf = self.pmf_impl(x, counted);
        let mut result = 0.0;
        while pmf > result * 1e-16 {
            result += pmf;
            pmf *= x;
            pmf *= n - counted - s + x;
            pmf /= counted - x + 1.0;
            pmf /= s - x + 1.0;
            x -= 1.0;
        }
        result
    }

    /// The quantile, rounded away from the median; with `complement`, of the upper tail.
    fn find_quantile(&self, mut quantile: f64, mut complement: bool) -> f64 {
        if quantile > 0.5 {
            quantile = 1.0 - quantile;
            complement = !complement;
        }
        if complement {
            self.sampled - self.find_quantile_impl(quantile, self.total - self.marked) - 1.0
        } else {
            self.find_quantile_impl(quantile, self.marked)
        }
    }

    fn find_quantile_impl(&self, quantile: f64, counted: f64) -> f64 {
        let (n, s) = (self.total, self.sampled);
        let basic_bound = counted + s - n - 1.0;
        // An inverted tail bound gives a lower bound on the result.
        let fancy_bound = s * (counted / n - (-quantile.ln() / (2.0 * s)).sqrt());
        let mut result = (-1.0f64).max(basic_bound).max(fancy_bound).floor();

        let mut cdf = self.cdf_impl(result, counted);
        let mut pmf = self.pmf_impl(result, counted);
        while cdf < quantile && result < s {
            if pmf > 0.0 {
                pmf /= result + 1.0;
                pmf /= n - counted - s + result + 1.0;
                pmf *= counted - result;
                pmf *= s - result;
            } else {
                pmf = self.pmf_impl(result + 1.0, counted);
            }
            cdf += pmf;
            result += 1.0;
        }
        result - 1.0
    }
}

/// ln Γ(x) for x > 0: Lanczos approximation (g = 7, 9 terms), relative error about 1e-15,
/// with the reflection formula below 0.5. `std` has no stable `lgamma`.
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Γ(x) Γ(1 − x) = π / sin(πx)
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEFFS[0];
    for (i, c) in COEFFS.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_log_factorials() {
        let mut log_fact = 0.0f64;
        for i in 1..=2000u32 {
            log_fact += f64::from(i).ln();
            let got = ln_gamma(f64::from(i) + 1.0);
            assert!(
                (got - log_fact).abs() <= 1e-12 * log_fact.max(1.0),
                "ln Γ({}) = {got}, want {log_fact}",
                i + 1
            );
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-14);
        assert!(ln_gamma(1.0).abs() < 1e-15 && ln_gamma(2.0).abs() < 1e-15);
    }

    #[test]
    fn hypergeometric_small_case_by_hand() {
        // 10 items, 4 marked, draw 3: Pr[X = x] = C(4,x) C(6,3−x) / C(10,3) = (20, 60, 36, 4)/120.
        let h = Hypergeometric::new(10.0, 4.0, 3.0);
        for (x, want) in [(0.0, 20.0), (1.0, 60.0), (2.0, 36.0), (3.0, 4.0)] {
            assert!((h.pmf_impl(x, 4.0) - want / 120.0).abs() < 1e-12);
        }
        assert!((h.cdf(1.0) - 80.0 / 120.0).abs() < 1e-12);
        assert!((h.cdf(2.0) - 116.0 / 120.0).abs() < 1e-12);
    }
}
