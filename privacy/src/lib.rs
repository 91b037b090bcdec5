//! # cohort-privacy
//!
//! Differential privacy for Cohort: the `[privacy]` configuration section, an accountant in Rust,
//! and the two noise pipelines, central and distributed. Like `cohort-aggregation` it is a
//! sans-IO core: no I/O, no async, no clock, no burn; every random draw comes from an RNG passed
//! in.
//!
//! What it is **not**: it does not encode the weight element or mask anything (that is
//! `cohort-aggregation`), it does not decide when a round starts or stops a task (that is the
//! coordinator, from a [`plan::PrivacyPlan`]), and it does not parse command lines (the
//! simulator wires [`query`] to `cohort-sim privacy`).
//!
//! ## Entry points
//!
//! - [`config::PrivacyConfig`]: the `[privacy]` section (serde, unknown keys refused), with
//!   [`config::PrivacyConfig::validate`] and [`config::PrivacyConfig::plan`], which, given the
//!   task's [`plan::TaskShape`], refuses bad input naming the key and returns a
//!   [`plan::PrivacyPlan`]: the noise multiplier, the ε budget, the round limit
//!   ([`plan::PrivacyPlan::round_fits`]), ε spent after any number of rounds
//!   ([`plan::PrivacyPlan::epsilon_after`]), and distributed mode's encoding parameters.
//! - [`accountant`]: RDP curves ([`accountant::RdpCurve`]) of the sampled Gaussian (Mironov et
//!   al. 2019, as Google's `dp-accounting`, checked against it on 480 known answers in
//!   `tests/kat.rs`), of the discrete Gaussian and of the distributed discrete Gaussian (Kairouz
//!   et al. 2021), composition, conversion to (ε, δ), and the inverses.
//! - [`distributed::DistributedEncoder`]: distributed mode. `encode(update, round_seed, rng)`
//!   on a client gives ring elements ready to be masked; `decode_sum(sum, survivors,
//!   round_seed)` on the server gives the noisy sum of the clipped updates.
//! - [`central`]: central mode. [`central::clip_to_norm`] and the clip bit on clients;
//!   [`central::CentralNoise`] (exact discrete Gaussian noise on the unmasked integer sum) and
//!   [`central::AdaptiveClip`] on the coordinator.
//! - [`query`]: the planning query behind `cohort-sim privacy`.
//! - Building blocks: [`sampler`] (the exact discrete Gaussian of Canonne, Kamath and Steinke
//!   2020), [`rotation`] (the randomised Hadamard transform), [`rounding`] (conditional
//!   randomised rounding).
//!
//! ## Decisions
//!
//! **Distributed mode adds discrete Gaussian shares, not Skellam.** Both are in the literature
//! (Kairouz, Liu, Steinke 2021; Agarwal, Kairouz, Liu 2021). The Skellam is closed under
//! summation, so its sum's RDP is exact; but sampling it means sampling Poissons of large mean,
//! for which no exact sampler with integer arithmetic is practical: every implementation in use
//! (numpy, TensorFlow) draws them in floating point. The discrete Gaussian has an exact sampler
//! ([`sampler`]), the same one central mode uses, and the sum of discrete Gaussians is close to
//! a discrete Gaussian with a proven bound whose slack τ is below 10⁻¹³ once each share has
//! σ ≥ 2 grid units ([`distributed::MIN_LOCAL_SIGMA`] enforces it). So the guarantee holds
//! without trusting floating-point sampling, at an accounting cost that rounds to nothing.
//!
//! **Central mode's noise is discrete too**, added by the coordinator to the unmasked integer
//! sum before decoding, with the same exact sampler. Unsampled, its RDP is exactly the
//! Gaussian's, so `dp-accounting`'s numbers apply.
//!
//! **Sampling model: none by default.** The coordinator's selection is not Poisson sampling:
//! it takes the first clients to check in (with a wait for the last round's members), and a
//! device's availability is not random and may be adversarial. Amplification by sampling
//! assumes each client's participation is an independent coin flip hidden from the adversary,
//! which does not hold. So, by default, the accounting assumes every client may take part in
//! every round and claims no amplification: sound for any selection, and conservative.
//! `dangerous_assume_poisson_rate = q` (named so, like rustls's dangerous options) is there for
//! deployments or simulations that really sample so; the exact sampled-Gaussian formula then applies only to the
//! continuous Gaussian ([`query`]), and Cohort's discrete mechanisms use the general bound of
//! Zhu and Wang 2019, which holds for any mechanism. Fixed-size sampling without replacement
//! (the simulator's random cohort) is not accounted separately; use no amplification there too.
//!
//! **Adjacency**: one client's contribution replaced by zero (no sampling), or one client
//! added or removed (Poisson sampling); the sensitivity is the clip norm either way, plus the
//! discretisation's rounding, which the integer sensitivity Δ₂ includes. Updates carry weight 1
//! in DP modes: a weighted update's sensitivity would grow with its weight.
//!
//! **Security claims, exactly.** Central mode: the released sum and everything computed from
//! it satisfy (ε, δ)-DP towards anyone but the coordinator (which sees the sum before noise).
//! Distributed mode: the unmasked sum satisfies (ε, δ)-DP towards a coordinator that follows
//! SecAgg+, provided at least q_min honest clients' shares are in it; clients colluding with the
//! coordinator remove their own shares. Both hold only if the clients' RNGs are
//! unpredictable (each encode seeds ChaCha12 from the caller's cryptographic RNG). Tests:
//! `tests/kat.rs` (the accounting), `tests/distributed.rs` and `tests/central.rs` (the noise
//! the pipelines actually add, and the norm bound), `sampler` unit tests (the exact
//! distribution).

pub mod accountant;
pub mod central;
pub mod config;
pub mod distributed;
pub mod plan;
pub mod query;
pub mod rotation;
pub mod rounding;
pub mod sampler;
