//! # cohort-sim
//!
//! Cohort's simulator: runs federated training with the production round and SecAgg+ state
//! machines of `cohort-aggregation` on a virtual clock, with modelled networks, device speeds,
//! availability and dropouts, and writes per-round metrics and plots. It is for researchers who
//! study algorithms and system behaviour at scale, reproducibly, on a laptop.
//!
//! It is not a deployment: there are no sockets (every message is timed by a link model and
//! delivered in memory) and no wall-clock waits. The round's lifecycle is the deployment's:
//! selection, round planning, the over-selection cut-off, decoding and the strategy step come
//! from `cohort-task`, as in the coordinator. [`live`] (feature `live`) runs the same experiment
//! on a real coordinator and real edge clients over QUIC on loopback.
//!
//! The pieces, in the order a run uses them:
//! - [`config::Experiment`]: the experiment file (TOML): a task in the coordinator's vocabulary
//!   (`cohort_task::config::TaskConfig`) plus `[run]`, `[population]`, `[data]`,
//!   `[availability]` and `[network]`, validated with errors that name the key.
//! - [`setup`]: loads the dataset, partitions it ([`cohort_datasets::PartitionSpec`]) and builds
//!   the trainer.
//! - [`cohort`]: the population (a partition and a device profile per client), the devices'
//!   check-ins answered by the production selector ([`cohort::CheckIns`]), and each attempt's
//!   dropout fates; [`network`]: device profiles.
//! - [`engine::Engine`]: the round loop: selection, the attempt's `RoundPlan`, parallel
//!   local training through [`trainer::LocalTrainer`] (by default `burn_trainer::BurnTrainer`
//!   over `cohort-learning`, the `learning` feature, on by default; [`mlp::MlpTrainer`], a
//!   plain-Rust MLP, with `run.trainer = "builtin"`, the only one in a `--no-default-features`
//!   build), one attempt on the virtual clock ([`secure_round`] with SecAgg+, its client events
//!   on worker threads; [`plain_round`] without), retries, the strategy, and evaluation.
//!   [`clock`] is the event queue, [`parallel`] the ordered worker-thread maps.
//! - [`metrics`] (`metrics.csv` through `csv` and serde, `summary.json`), [`plot`] (charts
//!   through `plotters` with a compiled-in font, SVG and PNG; [`plot::figures`] says which),
//!   [`progress`]: outputs; [`run`] ties a run together and writes them.
//! - [`contribution`]: the contributor ledger's credit beside each client's leave-one-out
//!   contribution, with free-riders and noisy clients (`cohort-sim contribution`).
//! - [`sweep`]: several experiments plotted together; [`bench`](mod@bench): the scale benchmarks.
//!
//! Entry point: [`run::run_experiment`], or the `cohort-sim` binary.
//!
//! ## Reproducibility
//! Every random choice derives from the experiment's seed through named streams
//! ([`seeds`]); local training and SecAgg+ client events run on several threads, but results
//! are gathered in cohort order and effects applied in event order. The same experiment and
//! seed therefore give identical `metrics.csv` files except for the `wall_s` column, whatever
//! the number of threads.
//!
//! ## SecAgg+ on and off
//! With `secagg.enabled = false` the same event loop runs an **insecure** plaintext round
//! ([`cohort_aggregation::plain::InsecurePlainAggregator`]), with the same clipping, weight cap,
//! quorum and dropout fates. Per round, the mean update under SecAgg+ then differs from the
//! plaintext mean by at most [`cohort_aggregation::encoding::Quantizer::tolerance`] per
//! coordinate (`clip / (2^(b-1) - 1)` plus f32 rounding, where `b` is the value bits chosen for
//! `selection.clients_per_round` clients and `secagg.max_weight`); `summary.json` reports it. With FedAvg at
//! server learning rate 1 the global models differ by at most that much after one round; over
//! several rounds, by at most the rounds times the tolerance when local training is
//! non-expansive in the global weights (a linear least-squares trainer, for example; a neural
//! network's training can amplify the difference).

pub mod attempt;
pub mod bench;
#[cfg(feature = "learning")]
pub mod burn_trainer;
pub mod clock;
pub mod cohort;
pub mod config;
pub mod contribution;
pub mod engine;
pub mod error;
#[cfg(feature = "live")]
pub mod live;
pub mod metrics;
pub mod mlp;
pub mod network;
pub mod parallel;
pub mod plain_round;
pub mod plot;
pub mod progress;
pub mod run;
pub mod secure_round;
pub mod seeds;
pub mod setup;
pub mod sweep;
pub mod synthetic;
pub mod trainer;

pub use config::Experiment;
pub use engine::Engine;
pub use error::SimError;
pub use trainer::{Eval, Finish, LocalTrainer, TrainError, TrainJob, TrainOutput};
