//! [`Engine`]: the round loop. Each attempt it lets the devices check in with the production
//! selector until a cohort forms ([`CheckIns`]), plans the attempt as the coordinator does
//! ([`RoundPlan`]: quantizer, k and t, quorum, the over-selection cut-off), trains the members
//! that will upload (in parallel on `threads` worker threads through the [`LocalTrainer`],
//! results in cohort order), runs the attempt on the virtual clock (SecAgg+ or plaintext),
//! retries an aborted attempt with a fresh cohort, decodes the sum and takes the strategy step
//! (`cohort_task::outcome`), and evaluates.
//!
//! Nothing a round computes depends on the thread count: every client's training seed is
//! derived from the run's seed, its client index and the attempt's round id (round × 10^6 +
//! attempt, [`Attempt`]), and results are gathered in cohort order.

use std::time::Instant;

use cohort_aggregation::encoding::Quantizer;
use cohort_aggregation::secagg::SigningKey;
use cohort_aggregation::secagg::negotiate_suite;
use cohort_aggregation::secagg::prg::local_suites;
use cohort_aggregation::strategy::Strategy;
use cohort_protocol::{ContentHash, RoundId};
use cohort_task::outcome::OutcomeError;
use cohort_task::plan::PlanError;
use cohort_task::privacy::{PrivacyCodec, PrivacyRoundError, TaskPrivacy, rotation_seed};
use cohort_task::{Attempt, RoundPlan, outcome};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use crate::attempt::{AttemptOutcome, Member, PreparedUpdate};
use crate::clock::{Micros, micros, seconds};
use crate::cohort::{self, CheckIns, Cohort, DropPhase, Population};
use crate::config::Experiment;
use crate::error::SimError;
use crate::metrics::{PrivacySummary, RoundMetrics};
use crate::parallel::worker_threads;
use crate::seeds::{self, Purpose};
use crate::trainer::{LocalTrainer, TrainError, TrainJob, TrainOutput};
use crate::{plain_round, secure_round};

/// How long (in selection windows) an attempt waits for a cohort before it is given up: only a
/// population that is almost never eligible comes near it.
const SELECTION_LIMIT_WINDOWS: f64 = 1_000.0;

/// The simulation of one experiment.
pub struct Engine<'t> {
    exp: Experiment,
    trainer: &'t dyn LocalTrainer,
    population: Population,
    check_ins: CheckIns,
    global: Vec<f32>,
    strategy: Box<dyn Strategy>,
    quantizer: Quantizer,
    threads: usize,
    sim_time: Micros,
    /// Differential privacy: the plan, the encoder, the adaptive clip.
    privacy: Option<TaskPrivacy>,
    /// Rounds whose model update was applied (what the privacy budget counts).
    completed_rounds: u64,
    /// Set when the next round did not fit the privacy budget.
    budget_exhausted: bool,
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("experiment", &self.exp.task.id)
            .field("clients", &self.population.len())
            .field("params", &self.global.len())
            .finish_non_exhaustive()
    }
}

impl<'t> Engine<'t> {
    /// Sets up the population, the initial model, the strategy and the encoding.
    pub fn new(
        exp: Experiment,
        trainer: &'t dyn LocalTrainer,
        partitions: Vec<Vec<usize>>,
    ) -> Result<Self, SimError> {
        exp.validate()?;
        let population = Population::new(&exp, partitions);
        let check_ins = CheckIns::new(&exp, population.len());
        let quantizer = cohort_task::plan::quantizer(&exp.task)?;
        let global = trainer.init(seeds::derive(exp.run.seed, Purpose::ModelInit, 0, 0));
        let strategy = exp.task.strategy.build()?;
        let privacy = match exp.privacy_plan(global.len())? {
            Some(plan) => {
                tracing::info!(task = %exp.task.id, "differential privacy: {plan}");
                Some(TaskPrivacy::new(plan, global.len())?)
            }
            None => None,
        };
        Ok(Self {
            privacy,
            completed_rounds: 0,
            budget_exhausted: false,
            threads: worker_threads(exp.run.threads),
            exp,
            trainer,
            population,
            check_ins,
            global,
            strategy,
            quantizer,
            sim_time: 0,
        })
    }

    /// The privacy summary of a run's rows; `None` without DP.
    pub fn privacy_summary(&self, rows: &[RoundMetrics]) -> Option<PrivacySummary> {
        let p = self.privacy.as_ref()?.plan();
        Some(PrivacySummary {
            mode: p.mode.as_str().to_string(),
            plan: p.to_string(),
            epsilon_budget: p.epsilon_budget,
            delta: p.delta,
            noise_multiplier: p.noise_multiplier,
            max_rounds: p.max_rounds,
            bits: p.distributed.as_ref().map(|d| d.bits),
            epsilon_spent: p.epsilon_after(self.completed_rounds),
            epsilon_by_round: rows.iter().filter_map(|r| r.epsilon).collect(),
            budget_exhausted: self.budget_exhausted,
        })
    }

    /// Whether the run stopped because the next round did not fit the privacy budget.
    pub fn budget_exhausted(&self) -> bool {
        self.budget_exhausted
    }

    /// The current global weights.
    pub fn global(&self) -> &[f32] {
        &self.global
    }

    /// The encoding (its tolerance bounds the SecAgg+ error per coordinate per round).
    pub fn quantizer(&self) -> &Quantizer {
        &self.quantizer
    }

    /// The population.
    pub fn population(&self) -> &Population {
        &self.population
    }

    /// The experiment.
    pub fn experiment(&self) -> &Experiment {
        &self.exp
    }

    /// Evaluates the current global model.
    pub fn evaluate(&self) -> Result<crate::trainer::Eval, SimError> {
        Ok(self.trainer.evaluate(&self.global)?)
    }

    /// Runs every round, calling `observer` after each; stops early at the target accuracy when
    /// `stop_at_target` is set.
    pub fn run(
        &mut self,
        observer: &mut dyn FnMut(&RoundMetrics),
    ) -> Result<Vec<RoundMetrics>, SimError> {
        let mut rows: Vec<RoundMetrics> = Vec::with_capacity(self.exp.task.rounds as usize);
        for round in 1..=self.exp.task.rounds {
            // Before each round, as the coordinator does: a round that does not fit the
            // privacy budget does not start.
            if let Some(p) = &self.privacy
                && !p.plan().round_fits(self.completed_rounds)
            {
                tracing::info!(
                    round,
                    epsilon = p.plan().epsilon_after(self.completed_rounds),
                    "privacy budget exhausted: no more rounds"
                );
                self.budget_exhausted = true;
                // The run ends here: evaluate the final model if its round was not.
                if let Some(last) = rows.last_mut()
                    && last.accuracy.is_none()
                {
                    let eval = self.trainer.evaluate(&self.global)?;
                    last.accuracy = Some(eval.accuracy);
                    last.loss = Some(eval.loss);
                }
                break;
            }
            let row = self.run_round(round)?;
            observer(&row);
            let reached = self.exp.run.stop_at_target
                && matches!((self.exp.run.target_accuracy, row.accuracy), (Some(t), Some(a)) if a >= t);
            rows.push(row);
            if reached {
                break;
            }
        }
        Ok(rows)
    }

    /// Runs round `round` (attempts and retries), applies the update and evaluates.
    pub fn run_round(&mut self, round: u32) -> Result<RoundMetrics, SimError> {
        let started = Instant::now();
        let mut row = RoundMetrics {
            round,
            attempts: 0,
            completed: false,
            accuracy: None,
            loss: None,
            train_loss: None,
            participants: 0,
            dropouts: 0,
            dropouts_by_phase: [0; 5],
            removed: 0,
            stopped: 0,
            bytes_up: 0,
            bytes_down: 0,
            sim_round_s: 0.0,
            sim_time_s: 0.0,
            wall_s: 0.0,
            epsilon: None,
            abort_reasons: Vec::new(),
        };
        let round_start = self.sim_time;
        let mut attempt = Attempt::first(u64::from(round));
        for _ in 0..self.exp.run.max_attempts {
            row.attempts += 1;
            let (outcome, codec) = self.run_attempt(round, attempt)?;
            row.bytes_up += outcome.bytes_up;
            row.bytes_down += outcome.bytes_down;
            row.removed += outcome.removed;
            row.stopped += outcome.stopped;
            for (d, o) in row.dropouts_by_phase.iter_mut().zip(outcome.dropouts) {
                *d += o;
            }
            row.dropouts += outcome.total_dropouts();
            let applied = match (&outcome.sum, &outcome.mean) {
                (Some(sum), _) if codec.is_some() => {
                    Some(self.release(codec.as_ref().expect("checked"), sum, attempt))
                }
                (Some(sum), _) => Some(
                    outcome::apply_sum(&self.quantizer, self.strategy.as_mut(), &self.global, sum)
                        .map(|o| o.weights)
                        .map_err(AttemptError::from),
                ),
                (None, Some(mean)) => Some(
                    outcome::step(self.strategy.as_mut(), &self.global, mean)
                        .map_err(AttemptError::from),
                ),
                (None, None) => None,
            };
            let reason = match applied {
                Some(Ok(next)) => {
                    self.global = next;
                    row.completed = true;
                    self.completed_rounds += 1;
                    row.participants = outcome.participants;
                    row.train_loss = outcome.train_loss;
                    break;
                }
                Some(Err(e)) => e.to_string(),
                None => outcome
                    .abort_reason
                    .unwrap_or_else(|| "no aggregate".to_string()),
            };
            tracing::info!(%attempt, %reason, "round attempt aborted; retrying with a fresh cohort");
            row.abort_reasons.push(reason);
            attempt = match attempt.next() {
                Some(a) => a,
                None => break,
            };
        }
        let every = self.exp.task.evaluate_every;
        if (every > 0 && round.is_multiple_of(every)) || round == self.exp.task.rounds {
            let eval = self.trainer.evaluate(&self.global)?;
            row.accuracy = Some(eval.accuracy);
            row.loss = Some(eval.loss);
        }
        row.epsilon = self
            .privacy
            .as_ref()
            .map(|p| p.plan().epsilon_after(self.completed_rounds));
        row.sim_round_s = seconds(self.sim_time - round_start);
        row.sim_time_s = seconds(self.sim_time);
        row.wall_s = started.elapsed().as_secs_f64();
        Ok(row)
    }

    /// Selects a cohort with the production selector on the virtual clock, plans the attempt
    /// and runs it; the clock then stands at the attempt's end.
    fn run_attempt(
        &mut self,
        round: u32,
        attempt: Attempt,
    ) -> Result<(AttemptOutcome, Option<PrivacyCodec>), SimError> {
        let window = self.exp.task.selection.window_secs;
        let give_up = self.sim_time + micros(window * SELECTION_LIMIT_WINDOWS);
        let Some((members, start)) = self.check_ins.select(self.sim_time, give_up) else {
            self.sim_time = give_up;
            let outcome = AttemptOutcome {
                abort_reason: Some(format!(
                    "no cohort formed in {} selection windows: too few clients are eligible \
                     (availability.online_probability)",
                    SELECTION_LIMIT_WINDOWS
                )),
                ..AttemptOutcome::default()
            };
            return Ok((outcome, None));
        };
        let fates = cohort::draw_fates(
            &self.exp,
            members.len(),
            round,
            u32::try_from(attempt.attempt).unwrap_or(u32::MAX),
        );
        let cohort = Cohort {
            members,
            fates,
            start,
        };
        let planned = RoundPlan::new(
            &self.exp.task,
            cohort.members.len() as u32,
            self.global.len(),
        )
        // Every simulated device runs on this machine and advertises what it supports, so
        // the negotiated suite is this machine's first choice (AES-128-CTR with AES-NI).
        .map(|plan| plan.with_suite(negotiate_suite([local_suites().as_slice()])))
        .and_then(|plan| match &self.privacy {
            // The round's L2 clip (adaptive clipping moves it) is the quantizer's range.
            // With distributed DP the ring is the DP encoding's.
            Some(p) => p.plan_round(plan),
            None => Ok(plan),
        })
        .map_err(AttemptError::from)
        .and_then(|plan| force_graph(plan, self.exp.forced_graph()));
        let mut codec = None;
        let outcome = match planned {
            Ok(plan) => {
                codec = self.privacy.as_ref().map(|p| {
                    p.codec(
                        &plan,
                        rotation_seed(&self.exp.task.id, attempt.round_id().0),
                    )
                });
                self.run_planned(&cohort, &plan, attempt, codec.as_ref())
            }
            Err(e) => AttemptOutcome {
                abort_reason: Some(e.to_string()),
                ..AttemptOutcome::default()
            },
        };
        let end = start + outcome.duration;
        let population = &self.population;
        self.check_ins
            .round_ended(start, end, &cohort.members, |c| {
                micros(population.profile(c).latency_s)
            });
        self.sim_time = end;
        Ok((outcome, codec))
    }

    /// A DP round's release: the server's noise (central) or decoding (distributed), then
    /// the strategy step; the adaptive clip moves only when the model does.
    fn release(
        &mut self,
        codec: &PrivacyCodec,
        sum: &cohort_aggregation::secagg::UnmaskedSum,
        attempt: Attempt,
    ) -> Result<Vec<f32>, AttemptError> {
        let Some(privacy) = self.privacy.as_ref() else {
            return Err(AttemptError::NoPrivacyPlan);
        };
        let mut next_privacy = privacy.clone();
        // The server's noise, from the run's seed (the coordinator draws it from the OS).
        let mut rng = ChaCha20Rng::from_seed(seeds::seed32(
            self.exp.run.seed,
            Purpose::ServerRound,
            attempt.round_id().0,
            1,
        ));
        let contributors = u32::try_from(sum.contributors.len()).unwrap_or(u32::MAX);
        let release = next_privacy.release(codec, &sum.sum, contributors, &mut rng)?;
        let next = outcome::step(self.strategy.as_mut(), &self.global, &release.mean)?;
        self.privacy = Some(next_privacy);
        Ok(next)
    }

    fn run_planned(
        &self,
        cohort: &Cohort,
        plan: &RoundPlan,
        attempt: Attempt,
        codec: Option<&PrivacyCodec>,
    ) -> AttemptOutcome {
        let round_id = attempt.round_id().0;
        let members = self.prepare(cohort, round_id, codec);
        if self.exp.task.secagg.enabled {
            let bytes: Vec<u8> = self.global.iter().flat_map(|x| x.to_le_bytes()).collect();
            let seed = self.exp.run.seed;
            secure_round::SecureAttempt {
                round_id: RoundId(round_id),
                plan,
                model: ContentHash::of(&bytes),
                num_params: self.global.len(),
                server_seed: seeds::seed32(seed, Purpose::ServerRound, round_id, 0),
                client_seeds: cohort
                    .members
                    .iter()
                    .map(|&c| seeds::seed32(seed, Purpose::ClientRound, c as u64, round_id))
                    .collect(),
                identities: cohort
                    .members
                    .iter()
                    .map(|&c| identity_key(seed, c))
                    .collect(),
                adversarial: self.exp.task.secagg.adversarial_fraction,
                dropout: self.exp.task.secagg.dropout_fraction,
                threads: self.threads,
            }
            .run(&members)
        } else {
            let d = &self.exp.task.deadlines;
            let deadline = d.advertise_keys + d.share_keys + d.masked_input;
            plain_round::run(
                &members,
                self.global.len(),
                deadline,
                plan.quorum as usize,
                plan.cutoff as usize,
            )
        }
    }

    /// Trains (in parallel) the members whose fate lets them upload, and encodes or clips their
    /// updates. A member whose training fails becomes a dropout at R2 that disconnects.
    fn prepare(&self, cohort: &Cohort, round_id: u64, codec: Option<&PrivacyCodec>) -> Vec<Member> {
        let jobs: Vec<(usize, bool)> = cohort
            .members
            .iter()
            .zip(&cohort.fates)
            .map(|(&c, f)| (c, f.uploads()))
            .collect();
        let secure = self.exp.task.secagg.enabled;
        let clip = self.exp.task.secagg.clip;
        let max_weight = self.quantizer.params().max_weight;
        let max_examples = self.exp.task.training.max_examples.map(|m| m as usize);
        let global = &self.global;
        let (population, trainer, quantizer, seed) = (
            &self.population,
            self.trainer,
            &self.quantizer,
            self.exp.run.seed,
        );
        // Each uploading member's examples (capped at max_examples) and training seed.
        let picked: Vec<Option<(u64, std::borrow::Cow<'_, [usize]>)>> = jobs
            .iter()
            .map(|&(c, uploads)| {
                let all = &population.partitions[c];
                if !uploads || all.is_empty() {
                    return None;
                }
                let train_seed = seeds::derive(seed, Purpose::Training, c as u64, round_id);
                let indices = match max_examples {
                    Some(cap) if all.len() > cap => {
                        let mut rng = ChaCha20Rng::seed_from_u64(train_seed);
                        let mut picked: Vec<usize> =
                            rand::seq::index::sample(&mut rng, all.len(), cap)
                                .into_iter()
                                .map(|i| all[i])
                                .collect();
                        picked.sort_unstable();
                        std::borrow::Cow::Owned(picked)
                    }
                    _ => std::borrow::Cow::Borrowed(all.as_slice()),
                };
                Some((train_seed, indices))
            })
            .collect();
        let train_jobs: Vec<TrainJob<'_>> = jobs
            .iter()
            .zip(&picked)
            .filter_map(|(&(c, _), p)| {
                p.as_ref().map(|(seed, indices)| TrainJob {
                    client: c,
                    indices,
                    seed: *seed,
                })
            })
            .collect();
        let finish = |job: &TrainJob<'_>, result: Result<TrainOutput, TrainError>| {
            let c = job.client;
            let out = match result {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!(client = c, error = %e, "local training failed; the client drops out");
                    return None;
                }
            };
            let weight = u32::try_from(out.examples)
                .unwrap_or(u32::MAX)
                .clamp(1, max_weight);
            let (encoded, plain) = if let Some(codec) = codec {
                // DP: clip (and noise share) on the device, weight 1.
                let mut rng = ChaCha20Rng::from_seed(seeds::seed32(
                    seed,
                    Purpose::Encoding,
                    c as u64,
                    round_id,
                ));
                match codec.encode(&out.delta, &mut rng) {
                    Ok(e) => (e, Vec::new()),
                    Err(e) => {
                        tracing::warn!(client = c, error = %e, "DP encoding failed; the client drops out");
                        return None;
                    }
                }
            } else if secure {
                let mut rng = ChaCha20Rng::seed_from_u64(seeds::derive(
                    seed,
                    Purpose::Encoding,
                    c as u64,
                    round_id,
                ));
                match quantizer.encode(&out.delta, weight, &mut rng) {
                    Ok(e) => (e, Vec::new()),
                    Err(e) => {
                        tracing::warn!(client = c, error = %e, "encoding failed; the client drops out");
                        return None;
                    }
                }
            } else {
                let clipped = out.delta.iter().map(|x| x.clamp(-clip, clip)).collect();
                (Vec::new(), clipped)
            };
            Some(PreparedUpdate {
                encoded,
                plain,
                weight,
                examples: out.examples,
                loss: out.loss,
            })
        };
        let mut trained = trainer
            .train_many(&train_jobs, global, self.threads, &finish)
            .into_iter();
        let updates: Vec<Option<PreparedUpdate>> = picked
            .iter()
            .map(|p| p.as_ref().and_then(|_| trained.next().flatten()))
            .collect();
        let epochs = u64::from(self.exp.task.training.epochs);
        cohort
            .members
            .iter()
            .zip(&cohort.fates)
            .zip(updates)
            .map(|((&c, &fate), update)| {
                let profile = self.population.profile(c);
                let mut fate = fate;
                if fate.uploads() && update.is_none() {
                    fate.drop_at = Some(DropPhase::MaskedInput);
                    fate.disconnect = true;
                }
                let held = self.population.partitions[c].len();
                let examples = max_examples.map_or(held, |m| held.min(m)) as u64 * epochs;
                Member {
                    profile,
                    fate,
                    update,
                    training_s: profile.training_s(examples, self.global.len()),
                }
            })
            .collect()
    }
}

/// Client `c`'s Ed25519 identity key under master seed `seed`: from the client's own stream,
/// the same in every round.
pub fn identity_key(seed: u64, c: usize) -> SigningKey {
    SigningKey::from_bytes(&seeds::seed32(seed, Purpose::Identity, c as u64, 0))
}

/// Applies `[comparison_only] dangerous_force_graph` to a plan: k and t as given, q_min raised to
/// t if below it. A cohort too small for the forced k cannot run (the attempt aborts, saying why).
fn force_graph(
    mut plan: RoundPlan,
    forced: Option<crate::config::ForcedGraph>,
) -> Result<RoundPlan, AttemptError> {
    let (Some(forced), Some(params)) = (forced, plan.secagg.as_mut()) else {
        return Ok(plan);
    };
    params.neighbours = forced.k;
    params.threshold = forced.t;
    params.min_survivors = params.min_survivors.max(forced.t);
    cohort_aggregation::secagg::config::validate(params).map_err(|source| {
        AttemptError::ForcedGraph {
            k: forced.k,
            t: forced.t,
            cohort: params.num_clients,
            source,
        }
    })?;
    plan.quorum = params.min_survivors;
    Ok(plan)
}

/// Why an attempt produced no new model. The round is retried with a fresh cohort and the
/// reason recorded in the round's `abort_reasons` (`metrics.csv`).
#[derive(Debug, Error)]
enum AttemptError {
    /// The attempt could not be planned for the cohort that formed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// `[comparison_only] dangerous_force_graph` asks for a graph the cohort cannot have.
    #[error(
        "comparison_only.dangerous_force_graph (k = {k}, t = {t}) does not fit a cohort of \
         {cohort}: {source}; lower k and t or raise clients_per_round"
    )]
    ForcedGraph {
        /// The forced neighbour count.
        k: u32,
        /// The forced threshold.
        t: u32,
        /// The cohort's size.
        cohort: u32,
        /// What the SecAgg+ parameter check refused.
        source: cohort_aggregation::secagg::ConfigError,
    },
    /// The DP release (central noise or the distributed decoding) failed.
    #[error(transparent)]
    Release(#[from] PrivacyRoundError),
    /// Decoding the sum or the strategy step failed.
    #[error(transparent)]
    Outcome(#[from] OutcomeError),
    /// A privacy codec was chosen without a privacy plan.
    #[error("a DP round has no privacy plan; this is a simulator bug, please report it")]
    NoPrivacyPlan,
}
