//! [`Engine`]: the round loop. Each round it selects a cohort (over-selected when the
//! experiment says so), trains the members that will upload (in parallel on `threads` worker
//! threads through the [`LocalTrainer`], results in cohort order), runs the attempt on the
//! virtual clock (SecAgg+ or plaintext), retries an aborted attempt with a fresh cohort,
//! applies the strategy, and evaluates.
//!
//! Nothing a round computes depends on the thread count: every client's training seed is
//! derived from the run's seed, its client index and the attempt, and results are gathered in
//! cohort order.

use std::time::Instant;

use cohort_aggregation::encoding::Quantizer;
use cohort_aggregation::secagg::recommended_params;
use cohort_aggregation::strategy::Strategy;
use cohort_protocol::{ContentHash, RoundId};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::attempt::{AttemptOutcome, Member, PreparedUpdate};
use crate::clock::{Micros, seconds};
use crate::cohort::{self, DropPhase, Population};
use crate::config::Experiment;
use crate::error::SimError;
use crate::metrics::RoundMetrics;
use crate::parallel::{map_ordered, worker_threads};
use crate::seeds::{self, Purpose};
use crate::trainer::LocalTrainer;
use crate::{plain_round, secure_round};

/// The largest total weight the default `max_weight` allows per round: `max_weight · n ≤ 2^16`
/// leaves at least 16 value bits for the encoding.
const DEFAULT_WEIGHT_BUDGET: u32 = 1 << 16;

/// The largest weight a client may claim in `exp`: `secagg.max_weight`, or by default the most
/// examples a client trains on (the largest partition, capped at `training.max_examples`),
/// capped so that `max_weight · clients_per_round ≤ 2^16`.
pub fn max_weight(exp: &Experiment, largest_partition: usize) -> u32 {
    exp.secagg.max_weight.unwrap_or_else(|| {
        let trained = match exp.training.max_examples {
            Some(cap) => largest_partition.min(cap as usize),
            None => largest_partition,
        };
        let largest = u32::try_from(trained).unwrap_or(u32::MAX);
        largest.clamp(
            1,
            (DEFAULT_WEIGHT_BUDGET / exp.clients_per_round.max(1)).max(1),
        )
    })
}

/// The simulation of one experiment.
pub struct Engine<'t> {
    exp: Experiment,
    trainer: &'t dyn LocalTrainer,
    population: Population,
    global: Vec<f32>,
    strategy: Box<dyn Strategy>,
    quantizer: Quantizer,
    threads: usize,
    sim_time: Micros,
    next_round_id: u64,
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("experiment", &self.exp.name)
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
        let n = exp.clients_per_round;
        let max_weight = max_weight(&exp, population.max_examples());
        let quantizer = Quantizer::for_cohort(n, exp.secagg.clip, max_weight)?;
        let global = trainer.init(seeds::derive(exp.seed, Purpose::ModelInit, 0, 0));
        let strategy = exp.strategy.build()?;
        Ok(Self {
            threads: worker_threads(exp.threads),
            exp,
            trainer,
            population,
            global,
            strategy,
            quantizer,
            sim_time: 0,
            next_round_id: 1,
        })
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
        let mut rows = Vec::with_capacity(self.exp.rounds as usize);
        for round in 1..=self.exp.rounds {
            let row = self.run_round(round)?;
            observer(&row);
            let reached = self.exp.stop_at_target
                && matches!((self.exp.target_accuracy, row.accuracy), (Some(t), Some(a)) if a >= t);
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
            dropouts_by_phase: [0; 4],
            removed: 0,
            stopped: 0,
            bytes_up: 0,
            bytes_down: 0,
            sim_round_s: 0.0,
            sim_time_s: 0.0,
            wall_s: 0.0,
            abort_reasons: Vec::new(),
        };
        let round_start = self.sim_time;
        for attempt in 0..self.exp.max_attempts {
            row.attempts += 1;
            let outcome = self.run_attempt(round, attempt)?;
            self.sim_time += outcome.duration;
            row.bytes_up += outcome.bytes_up;
            row.bytes_down += outcome.bytes_down;
            row.removed += outcome.removed;
            row.stopped += outcome.stopped;
            for (d, o) in row.dropouts_by_phase.iter_mut().zip(outcome.dropouts) {
                *d += o;
            }
            row.dropouts += outcome.total_dropouts();
            if let Some(mean) = outcome.mean {
                self.strategy.apply(&mut self.global, &mean)?;
                row.completed = true;
                row.participants = outcome.participants;
                row.train_loss = outcome.train_loss;
                break;
            }
            let reason = outcome
                .abort_reason
                .unwrap_or_else(|| "no aggregate".to_string());
            tracing::info!(round, attempt = attempt + 1, %reason, "round attempt aborted; retrying with a fresh cohort");
            row.abort_reasons.push(reason);
        }
        if round.is_multiple_of(self.exp.eval_every) || round == self.exp.rounds {
            let eval = self.trainer.evaluate(&self.global)?;
            row.accuracy = Some(eval.accuracy);
            row.loss = Some(eval.loss);
        }
        row.sim_round_s = seconds(self.sim_time - round_start);
        row.sim_time_s = seconds(self.sim_time);
        row.wall_s = started.elapsed().as_secs_f64();
        Ok(row)
    }

    fn run_attempt(&mut self, round: u32, attempt: u32) -> Result<AttemptOutcome, SimError> {
        let round_id = self.next_round_id;
        self.next_round_id += 1;
        let cohort = cohort::select(&self.exp, self.population.len(), round, attempt);
        let min = if self.exp.secagg.enabled { 3 } else { 1 };
        if cohort.members.len() < min {
            return Ok(AttemptOutcome {
                abort_reason: Some(format!(
                    "only {} client(s) online, a round needs at least {min}",
                    cohort.online
                )),
                ..AttemptOutcome::default()
            });
        }
        let members = self.prepare(&cohort, round_id);
        let n = members.len() as u32;
        // With over-selection the server aggregates the first `target` updates.
        let target = (self.exp.clients_per_round as usize).min(members.len());
        let quorum = self.exp.plain_quorum().min(target);
        if self.exp.secagg.enabled {
            let vector_len = self.global.len() as u32 + 1;
            // Over-selected clients that are told to stop are dropouts for the protocol; the
            // dropout fraction the graph is sized for grows so that the quorum stays that of
            // `clients_per_round` clients.
            let dropout = if members.len() > target {
                1.0 - quorum as f64 / members.len() as f64
            } else {
                self.exp.secagg.dropout_fraction
            };
            let params = match recommended_params(
                n,
                vector_len,
                self.quantizer.params(),
                self.exp.secagg.adversarial_fraction,
                dropout,
            ) {
                Ok(mut p) => {
                    if members.len() > target {
                        p.min_survivors = (quorum as u32).max(p.threshold);
                    }
                    p
                }
                Err(e) => {
                    return Ok(AttemptOutcome {
                        abort_reason: Some(format!(
                            "no usable SecAgg+ parameters for {n} clients: {e}"
                        )),
                        ..AttemptOutcome::default()
                    });
                }
            };
            let bytes: Vec<u8> = self.global.iter().flat_map(|x| x.to_le_bytes()).collect();
            let attempt = secure_round::SecureAttempt {
                round_id: RoundId(round_id),
                params,
                deadlines: self.exp.deadlines.phase_deadlines(),
                model: ContentHash::of(&bytes),
                num_params: self.global.len(),
                server_seed: seeds::seed32(self.exp.seed, Purpose::ServerRound, round_id, 0),
                client_seeds: cohort
                    .members
                    .iter()
                    .map(|&c| {
                        seeds::seed32(self.exp.seed, Purpose::ClientRound, c as u64, round_id)
                    })
                    .collect(),
                quantizer: &self.quantizer,
                threads: self.threads,
                target,
            };
            Ok(attempt.run(&members))
        } else {
            let d = &self.exp.deadlines;
            let deadline = d.advertise_keys + d.share_keys + d.masked_input;
            Ok(plain_round::run(
                &members,
                self.global.len(),
                deadline,
                self.exp.plain_quorum(),
                target,
            ))
        }
    }

    /// Trains (in parallel) the members whose fate lets them upload, and encodes or clips their
    /// updates. A member whose training fails becomes a dropout at R2 that disconnects.
    fn prepare(&self, cohort: &cohort::Cohort, round_id: u64) -> Vec<Member> {
        let jobs: Vec<(usize, bool)> = cohort
            .members
            .iter()
            .zip(&cohort.fates)
            .map(|(&c, f)| (c, f.uploads()))
            .collect();
        let secure = self.exp.secagg.enabled;
        let clip = self.exp.secagg.clip;
        let max_weight = self.quantizer.params().max_weight;
        let max_examples = self.exp.training.max_examples.map(|m| m as usize);
        let global = &self.global;
        let (population, trainer, quantizer, seed) = (
            &self.population,
            self.trainer,
            &self.quantizer,
            self.exp.seed,
        );
        let updates = map_ordered(&jobs, self.threads, |&(c, uploads)| {
            if !uploads {
                return None;
            }
            let all = &population.partitions[c];
            if all.is_empty() {
                return None;
            }
            let train_seed = seeds::derive(seed, Purpose::Training, c as u64, round_id);
            let subset;
            let indices: &[usize] = match max_examples {
                Some(cap) if all.len() > cap => {
                    let mut rng = ChaCha20Rng::seed_from_u64(train_seed);
                    let mut picked: Vec<usize> = rand::seq::index::sample(&mut rng, all.len(), cap)
                        .into_iter()
                        .map(|i| all[i])
                        .collect();
                    picked.sort_unstable();
                    subset = picked;
                    &subset
                }
                _ => all,
            };
            let out = match trainer.train(c, indices, global, train_seed) {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!(client = c, error = %e, "local training failed; the client drops out");
                    return None;
                }
            };
            let weight = u32::try_from(out.examples)
                .unwrap_or(u32::MAX)
                .clamp(1, max_weight);
            let (encoded, plain) = if secure {
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
        });
        let epochs = u64::from(self.exp.training.epochs);
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
