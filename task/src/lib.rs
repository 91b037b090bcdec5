//! # cohort-task
//!
//! The lifecycle of one federated round around the SecAgg+ core, written once: the
//! coordinator, the simulator and the simulator's live mode only drive it. It holds
//!
//! - [`config`]: the one configuration vocabulary of a task (`[model]`, `[training]`,
//!   `[strategy]`, `[selection]`, `[secagg]`, `[deadlines]`), read by the coordinator's task
//!   files and, as their task part, by the simulator's experiment files;
//! - [`selection`]: who takes part: over-selection, pace steering and the wait of the last
//!   round's members ([`selection::Selector`]);
//! - [`plan`]: one attempt's [`plan::RoundPlan`] (cohort size → quantizer, k and t, quorum,
//!   deadlines, the cut-off) and the minimum cohort ([`plan::MIN_COHORT`]);
//! - [`cutoff`]: the over-selection cut-off applied around the server state machine
//!   ([`cutoff::CutoffRound`]);
//! - [`privacy`]: the `[privacy]` section planned against the task, and a DP round's encoding
//!   on devices and release on the server ([`privacy::TaskPrivacy`], [`privacy::PrivacyCodec`]);
//! - [`device_privacy`]: a device's checks of a task's DP against its owner's limit and of
//!   each round's noise against the task's declaration;
//! - [`outcome`]: the released sum decoded and the strategy step;
//! - [`evaluation`]: federated evaluation carried inside the masked vector (each device's
//!   clipped scalars as extra coordinates; the server decodes only their sums);
//! - [`ledger`]: the contributor ledger's credit rule (an equal split among a round's members);
//! - [`round_id`]: the SecAgg+ round id of an attempt, `round × 10^6 + attempt`
//!   ([`round_id::Attempt`]).
//!
//! What it is not: a shell. Like `cohort-aggregation` it does no I/O, reads no clock (time is
//! passed in) and holds no randomness of its own (jitter and seeds are passed in), and it links
//! no burn. Where a round's messages travel, the one timer per round that wakes the state
//! machine at its `poll_timeout` and what is stored when belong to the shells
//! (`cohort-coordinator`, `cohort-sim`).
//!
//! Entry point: [`config::TaskConfig::from_toml`], then [`selection::Selector`] and
//! [`plan::RoundPlan::new`] per attempt.

pub mod config;
pub mod cutoff;
pub mod device_privacy;
pub mod evaluation;
pub mod ledger;
pub mod outcome;
pub mod plan;
pub mod privacy;
pub mod round_id;
pub mod selection;

pub use config::{ConfigError, TaskConfig};
pub use plan::{MIN_COHORT, RoundPlan};
pub use round_id::Attempt;
