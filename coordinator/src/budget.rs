//! A task's privacy budget as the model owner reads it: the plan its definition gives (mode,
//! δ, noise, clip, the ε budget and the rounds it affords) and the ε each published round
//! spent, read from the verified round log (each entry carries it in its params, so the hash
//! chain covers the figure the devices check).
//!
//! One reading for `cohort-coordinator task show` and the owners' API
//! (`GET /api/v1/tasks/{id}/privacy`, the console's privacy panel).

use cohort_privacy::accountant::Sampling;
use cohort_privacy::config::PrivacyMode;
use cohort_privacy::plan::PrivacyPlan;
use cohort_protocol::TaskId;
use cohort_protocol::model::SpecError;
use cohort_task::config::ConfigError;
use serde::Serialize;
use thiserror::Error;

use crate::publish::epsilon_spent_of;
use crate::round_log::RoundLogError;
use crate::store::{Store, StoreError};
use crate::task::TaskDefinition;

/// The most points of the planned ε curve in a [`BudgetReport`] (one per round up to this
/// many; beyond it the curve is sampled evenly, always ending at the last affordable round).
pub const MAX_CURVE_POINTS: u64 = 500;

/// Why a task's budget could not be read.
#[derive(Debug, Error)]
pub enum BudgetError {
    /// No task with this id.
    #[error("no task {0}; `task list` shows the tasks")]
    UnknownTask(String),
    /// The stored definition no longer parses (written by another version).
    #[error("task {task}: its stored definition is unreadable ({source}); recreate the task")]
    Definition {
        /// The task.
        task: String,
        /// Why.
        #[source]
        source: Box<ConfigError>,
    },
    /// The model spec is invalid, so the plan (which depends on its size) cannot be made.
    #[error("task {task}: its model spec is invalid ({source}); recreate the task")]
    Model {
        /// The task.
        task: String,
        /// Why.
        #[source]
        source: SpecError,
    },
    /// The round log does not verify: its ε figures cannot be trusted.
    #[error("task {task}: {source}; `log verify {task}` says where the chain breaks")]
    Log {
        /// The task.
        task: String,
        /// Why.
        #[source]
        source: Box<RoundLogError>,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A task's privacy budget: the plan and what was spent.
#[derive(Clone, Debug)]
pub struct Budget {
    /// The plan of the task's definition.
    pub plan: PrivacyPlan,
    /// Each published round and the ε spent after it, in round order.
    pub spent: Vec<(u64, f64)>,
}

impl Budget {
    /// The budget of task `id`: `None` for a task without differential privacy.
    pub fn of(store: &Store, id: &str) -> Result<Option<Budget>, BudgetError> {
        let row = store
            .task(id)?
            .ok_or_else(|| BudgetError::UnknownTask(id.to_string()))?;
        let def = TaskDefinition::from_stored(&row.definition).map_err(|source| {
            BudgetError::Definition {
                task: id.to_string(),
                source: Box::new(source),
            }
        })?;
        let dim = def
            .model()
            .num_parameters()
            .map_err(|source| BudgetError::Model {
                task: id.to_string(),
                source,
            })?;
        let Some(plan) = def
            .privacy_plan(dim, None)
            .map_err(|source| BudgetError::Definition {
                task: id.to_string(),
                source: Box::new(source),
            })?
        else {
            return Ok(None);
        };
        let entries = store
            .round_log()
            .verify(&TaskId(id.to_string()))
            .map_err(|source| BudgetError::Log {
                task: id.to_string(),
                source: Box::new(source),
            })?;
        let spent = entries
            .iter()
            .filter(|e| e.entry.round.0 > 0)
            .filter_map(|e| epsilon_spent_of(&e.entry.params).map(|eps| (e.entry.round.0, eps)))
            .collect();
        Ok(Some(Budget { plan, spent }))
    }

    /// ε spent so far (0 before the first round).
    pub fn epsilon_spent(&self) -> f64 {
        self.spent.last().map_or(0.0, |&(_, eps)| eps)
    }

    /// Rounds that may still start within the budget.
    pub fn rounds_left(&self) -> u64 {
        self.plan.max_rounds.saturating_sub(self.spent.len() as u64)
    }

    /// The ε the accountant gives after each number of rounds up to the plan's limit (at most
    /// [`MAX_CURVE_POINTS`] points, the last at the limit): what the owner can expect.
    pub fn planned_curve(&self) -> Vec<(u64, f64)> {
        let max = self.plan.max_rounds;
        if max == 0 {
            return Vec::new();
        }
        let step = max.div_ceil(MAX_CURVE_POINTS);
        let mut rounds: Vec<u64> = (1..=max).step_by(step as usize).collect();
        if rounds.last() != Some(&max) {
            rounds.push(max);
        }
        rounds
            .into_iter()
            .map(|r| (r, self.plan.epsilon_after(r)))
            .collect()
    }

    /// The report the API serves.
    pub fn report(&self, task: &str) -> BudgetReport {
        let plan = &self.plan;
        BudgetReport {
            task: task.to_string(),
            enabled: true,
            mode: Some(plan.mode.as_str()),
            epsilon_budget: Some(plan.epsilon_budget),
            delta: Some(plan.delta),
            noise_multiplier: Some(plan.noise_multiplier),
            clip: Some(plan.clip),
            adaptive_clip: plan.adaptive_clip.map(|a| AdaptiveClipReport {
                target_quantile: a.target_quantile,
                learning_rate: a.learning_rate,
                count_stddev: a.count_stddev,
            }),
            noise_added_by: Some(match plan.mode {
                PrivacyMode::Distributed => "devices",
                _ => "coordinator",
            }),
            sampling: Some(match plan.sampling {
                Sampling::None => SamplingReport {
                    kind: "none",
                    rate: None,
                },
                Sampling::Poisson { rate } => SamplingReport {
                    kind: "poisson",
                    rate: Some(rate),
                },
            }),
            max_rounds: Some(plan.max_rounds),
            rounds_published: self.spent.len() as u64,
            rounds_left: Some(self.rounds_left()),
            epsilon_spent: Some(self.epsilon_spent()),
            summary: Some(plan.to_string()),
            spent: self
                .spent
                .iter()
                .map(|&(round, epsilon)| CurvePoint { round, epsilon })
                .collect(),
            planned: self
                .planned_curve()
                .into_iter()
                .map(|(round, epsilon)| CurvePoint { round, epsilon })
                .collect(),
        }
    }
}

/// The report of a task without differential privacy.
pub fn no_privacy_report(task: &str) -> BudgetReport {
    BudgetReport {
        task: task.to_string(),
        enabled: false,
        mode: Some(PrivacyMode::None.as_str()),
        epsilon_budget: None,
        delta: None,
        noise_multiplier: None,
        clip: None,
        adaptive_clip: None,
        noise_added_by: None,
        sampling: None,
        max_rounds: None,
        rounds_published: 0,
        rounds_left: None,
        epsilon_spent: None,
        summary: None,
        spent: Vec::new(),
        planned: Vec::new(),
    }
}

/// What `GET /api/v1/tasks/{id}/privacy` answers (documented in `docs/api/openapi.yaml`).
#[derive(Clone, Debug, Serialize)]
pub struct BudgetReport {
    /// The task.
    pub task: String,
    /// Whether the task runs with differential privacy.
    pub enabled: bool,
    /// `none`, `central` or `distributed`.
    pub mode: Option<&'static str>,
    /// The ε budget.
    pub epsilon_budget: Option<f64>,
    /// δ.
    pub delta: Option<f64>,
    /// The noise multiplier z.
    pub noise_multiplier: Option<f64>,
    /// The (initial) L2 clip.
    pub clip: Option<f64>,
    /// Adaptive clipping, when on.
    pub adaptive_clip: Option<AdaptiveClipReport>,
    /// `coordinator` (central) or `devices` (distributed).
    pub noise_added_by: Option<&'static str>,
    /// The sampling the accountant assumes.
    pub sampling: Option<SamplingReport>,
    /// Rounds the budget affords.
    pub max_rounds: Option<u64>,
    /// Rounds published with an ε in their log entry.
    pub rounds_published: u64,
    /// Rounds that may still start.
    pub rounds_left: Option<u64>,
    /// ε spent after the last published round.
    pub epsilon_spent: Option<f64>,
    /// The plan in words (as `task show` prints it).
    pub summary: Option<String>,
    /// ε after each published round, from the verified round log.
    pub spent: Vec<CurvePoint>,
    /// ε the accountant gives after each number of rounds up to `max_rounds`.
    pub planned: Vec<CurvePoint>,
}

/// Adaptive clipping's parameters.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AdaptiveClipReport {
    /// The target quantile of update norms.
    pub target_quantile: f64,
    /// The geometric update's learning rate.
    pub learning_rate: f64,
    /// The noise on the below-the-clip count.
    pub count_stddev: f64,
}

/// The sampling the accountant assumes.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SamplingReport {
    /// `none` (no amplification) or `poisson`.
    pub kind: &'static str,
    /// The Poisson rate.
    pub rate: Option<f64>,
}

/// ε after a number of rounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Rounds.
    pub round: u64,
    /// ε.
    pub epsilon: f64,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cohort_protocol::ContentHash;
    use cohort_task::Attempt;

    use super::*;
    use crate::checkpoints::Checkpoints;
    use crate::publish::{Finished, publish};
    use crate::states::TaskState;
    use crate::store::AsyncStore;

    fn store_with(toml: &str) -> Store {
        let store = Store::open_in_memory().unwrap();
        let def = TaskDefinition::from_toml(toml).unwrap();
        store
            .put_task(&def.id, &def.to_toml().unwrap(), TaskState::Created, 0)
            .unwrap();
        store
    }

    const TRAINING: &str = "[training]\nepochs = 1\nbatch_size = 4\nlearning_rate = 0.1\n\
                            [selection]\nclients_per_round = 20\n";

    fn dp_task(id: &str, rounds_budget: u32) -> String {
        format!(
            "id = \"{id}\"\nrounds = 10\n[model]\ninput_shape = [2]\nnum_classes = 2\n\
             layers = [{{ type = \"linear\", out = 2 }}]\n{TRAINING}\
             [privacy]\nmode = \"central\"\nnoise_multiplier = 2.0\nrounds = {rounds_budget}\n\
             delta = 1e-3\n[privacy.clip]\nnorm = 1.0\n"
        )
    }

    #[test]
    fn a_task_without_dp_has_no_budget_and_an_unknown_task_is_named() {
        let store = store_with(&format!(
            "id = \"plain\"\nrounds = 2\n[model]\ninput_shape = [2]\nnum_classes = 2\n\
             layers = [{{ type = \"linear\", out = 2 }}]\n{TRAINING}"
        ));
        assert!(Budget::of(&store, "plain").unwrap().is_none());
        let err = Budget::of(&store, "nope").unwrap_err();
        assert!(matches!(err, BudgetError::UnknownTask(_)), "{err}");
        assert!(err.to_string().contains("task list"), "{err}");
        let report = no_privacy_report("plain");
        assert!(!report.enabled);
        assert_eq!(report.mode, Some("none"));
    }

    #[tokio::test]
    async fn the_budget_reads_each_rounds_epsilon_from_the_log() {
        let store = store_with(&dp_task("dp", 3));
        let fresh = Budget::of(&store, "dp").unwrap().unwrap();
        assert_eq!(fresh.plan.max_rounds, 3);
        assert_eq!(fresh.epsilon_spent(), 0.0);
        assert_eq!(fresh.rounds_left(), 3);
        let curve = fresh.planned_curve();
        assert_eq!(curve.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(curve.windows(2).all(|w| w[0].1 < w[1].1), "{curve:?}");
        assert!(curve[2].1 <= fresh.plan.epsilon_budget, "{curve:?}");

        // Two rounds published with the accountant's ε, as the scheduler does.
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::open(dir.path()).unwrap();
        let store = AsyncStore(Arc::new(store));
        let mut previous = ContentHash::of(b"initial");
        for round in 1..=2u64 {
            let weights = vec![round as f32; 6];
            let (model, _) = publish(
                &store,
                &checkpoints,
                Finished {
                    task: TaskId("dp".into()),
                    attempt: Attempt { round, attempt: 1 },
                    selected: 4,
                    contributors: 4,
                    previous,
                    weights: &weights,
                    strategy: "fed_avg",
                    strategy_state: Default::default(),
                    epsilon_spent: Some(fresh.plan.epsilon_after(round)),
                    adaptive_clip: None,
                    members: None,
                    now: 0,
                },
            )
            .await
            .unwrap();
            previous = model;
        }
        let budget = Budget::of(&store.0, "dp").unwrap().unwrap();
        assert_eq!(budget.spent, [(1, curve[0].1), (2, curve[1].1)]);
        assert_eq!(budget.epsilon_spent(), curve[1].1);
        assert_eq!(budget.rounds_left(), 1);
        let report = budget.report("dp");
        assert_eq!(report.mode, Some("central"));
        assert_eq!(report.noise_added_by, Some("coordinator"));
        assert_eq!(report.rounds_published, 2);
        assert_eq!(report.planned.len(), 3);
        assert!(report.summary.unwrap().contains("epsilon"));
    }

    #[test]
    fn the_planned_curve_is_sampled_and_ends_at_the_limit() {
        let store = store_with(&dp_task("long", 1234));
        let budget = Budget::of(&store, "long").unwrap().unwrap();
        let curve = budget.planned_curve();
        assert!(
            curve.len() as u64 <= MAX_CURVE_POINTS + 1,
            "{}",
            curve.len()
        );
        assert_eq!(curve.first().unwrap().0, 1);
        assert_eq!(curve.last().unwrap().0, 1234);
        assert!(curve.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
