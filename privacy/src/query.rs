//! The accountant as a planning tool, for `cohort-sim privacy`:
//!
//! ```text
//! cohort-sim privacy --noise-multiplier Z --sampling-rate Q --rounds T --delta D   # prints ε
//! cohort-sim privacy --epsilon E --sampling-rate Q --rounds T --delta D            # prints z
//! ```
//!
//! [`PrivacyQuery`] is the command's arguments without the command-line parser, and
//! [`answer`] runs it; the [`QueryAnswer`]'s `Display` is the text the command prints, e.g.
//!
//! ```text
//! Gaussian mechanism, noise multiplier 1.1, Poisson sampling rate 0.01, 1000 rounds, delta 1e-5:
//! epsilon = 1.7118 (best RDP order 9.6)
//! Cohort's discrete Gaussian with the same parameters, sampling accounted by Zhu and Wang's general bound: epsilon = 2.0151
//!
//! Gaussian mechanism, target epsilon 3, no sampling, 100 rounds, delta 1e-6:
//! noise multiplier = 16.4369 (epsilon 3, best RDP order 8.9)
//! ```
//!
//! The first result is the continuous Gaussian's, as Google's `dp-accounting` computes it
//! (checked against it to 1% by `tests/kat.rs`). When the sampling rate is below 1 the answer
//! also gives what Cohort's own modes would account for the same noise: they add discrete
//! Gaussians, whose sampled RDP this crate bounds more conservatively (see
//! [`crate::accountant`]). Without sampling the two agree exactly.

use std::fmt;

use crate::accountant::{
    AccountantError, Epsilon, Mechanism, RdpCurve, Sampling, noise_multiplier_for,
};
use crate::plan::number;

/// What to compute from: the noise (for ε) or a target ε (for the noise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueryNoise {
    /// `--noise-multiplier Z`: print ε.
    NoiseMultiplier(f64),
    /// `--epsilon E`: print the smallest noise multiplier that meets it.
    Epsilon(f64),
}

/// The arguments of `cohort-sim privacy`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyQuery {
    /// `--noise-multiplier` or `--epsilon`.
    pub noise: QueryNoise,
    /// `--sampling-rate Q` in (0, 1]; 1 for no sampling.
    pub sampling_rate: f64,
    /// `--rounds T`.
    pub rounds: u64,
    /// `--delta D`.
    pub delta: f64,
}

/// The result of a [`PrivacyQuery`]; `Display` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryAnswer {
    /// The query.
    pub query: PrivacyQuery,
    /// The noise multiplier (given, or found).
    pub noise_multiplier: f64,
    /// ε for that noise multiplier (the Gaussian mechanism, as `dp-accounting`).
    pub epsilon: Epsilon,
    /// With sampling, ε of Cohort's discrete Gaussian for the same noise multiplier.
    pub discrete_epsilon: Option<f64>,
}

/// Runs a query. Refuses a δ outside (0, 1), a sampling rate outside (0, 1], a non-positive
/// noise multiplier or ε, and a target ε no noise multiplier up to 10^6 reaches.
pub fn answer(query: &PrivacyQuery) -> Result<QueryAnswer, AccountantError> {
    let sampling = if query.sampling_rate == 1.0 {
        Sampling::None
    } else {
        Sampling::Poisson {
            rate: query.sampling_rate,
        }
    };
    let gaussian = |z: f64| {
        RdpCurve::per_round(
            Mechanism::Gaussian {
                noise_multiplier: z,
            },
            sampling,
        )
    };
    let noise_multiplier = match query.noise {
        QueryNoise::NoiseMultiplier(z) => z,
        QueryNoise::Epsilon(target) => {
            noise_multiplier_for(target, query.delta, query.rounds, gaussian)?
        }
    };
    let epsilon = gaussian(noise_multiplier)?.epsilon_after(query.rounds, query.delta)?;
    let discrete_epsilon = match sampling {
        Sampling::None => None,
        Sampling::Poisson { .. } => Some(
            RdpCurve::per_round(Mechanism::DiscreteGaussian { noise_multiplier }, sampling)?
                .epsilon_after(query.rounds, query.delta)?
                .epsilon,
        ),
    };
    Ok(QueryAnswer {
        query: *query,
        noise_multiplier,
        epsilon,
        discrete_epsilon,
    })
}

impl fmt::Display for QueryAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = &self.query;
        let sampling = if q.sampling_rate == 1.0 {
            "no sampling".to_string()
        } else {
            format!("Poisson sampling rate {}", number(q.sampling_rate))
        };
        let order = if self.epsilon.order > 0.0 {
            format!("best RDP order {}", number(self.epsilon.order))
        } else {
            "no RDP order needed".to_string()
        };
        match q.noise {
            QueryNoise::NoiseMultiplier(z) => {
                writeln!(
                    f,
                    "Gaussian mechanism, noise multiplier {}, {sampling}, {} rounds, delta {}:",
                    number(z),
                    q.rounds,
                    number(q.delta)
                )?;
                writeln!(f, "epsilon = {} ({order})", number(self.epsilon.epsilon))?;
            }
            QueryNoise::Epsilon(target) => {
                writeln!(
                    f,
                    "Gaussian mechanism, target epsilon {}, {sampling}, {} rounds, delta {}:",
                    number(target),
                    q.rounds,
                    number(q.delta)
                )?;
                writeln!(
                    f,
                    "noise multiplier = {} (epsilon {}, {order})",
                    number(self.noise_multiplier),
                    number(self.epsilon.epsilon)
                )?;
            }
        }
        if let Some(d) = self.discrete_epsilon {
            writeln!(
                f,
                "Cohort's discrete Gaussian with the same parameters, sampling accounted by Zhu \
                 and Wang's general bound: epsilon = {}",
                number(d)
            )?;
        }
        Ok(())
    }
}
