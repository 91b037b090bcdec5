//! The contributor ledger beside the truth (`cohort-sim contribution`).
//!
//! A live coordinator credits each round's members with [`cohort_task::ledger::credit_round`]:
//! the round's drop in held-out loss split equally among them, because under SecAgg+ it sees no
//! single update and devices report no example count. A simulator sees every update, so it can
//! also measure each client's true contribution and say how well the ledger tracks it:
//!
//! - **Leave-one-out** per round: the held-out loss of the model aggregated without the client
//!   minus the loss of the model aggregated with everyone (positive: the round was better for
//!   its update). A client's contribution is the sum over the rounds it was in.
//! - **Agreement**: Spearman's rank correlation between the ledger's total credit and the
//!   leave-one-out total, over every client that took part (and over the honest ones alone).
//! - **Adversaries**: the first `free_riders` clients upload zeros and claim the task's largest
//!   weight (`secagg.max_weight`, inside their masked input, where the mean uses it); the next
//!   `noisy` clients upload a random vector of the same norm as their honest update, with their
//!   true weight. Their credit and contribution per
//!   round are compared with the honest clients' medians.
//!
//! The round is plain FedAvg (the weighted mean of the updates, each coordinate clipped to
//! `secagg.clip` when SecAgg+ is on, applied with step 1), whatever the experiment's strategy,
//! over a uniform sample of `selection.clients_per_round` clients; availability, dropouts and
//! the network model play no part (they change who is in a round, not what the ledger does
//! with them). Everything derives from the experiment's seed.

use rand::Rng;
use rand::seq::index::sample;
use serde::Serialize;

use cohort_task::config::ConfigError;
use cohort_task::ledger::credit_round;

use crate::config::Experiment;
use crate::error::SimError;
use crate::parallel::{map_ordered, worker_threads};
use crate::seeds::{self, Purpose};
use crate::trainer::LocalTrainer;

/// Who the adversarial clients are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Adversaries {
    /// Clients `0..free_riders` upload zeros and claim the largest weight.
    pub free_riders: usize,
    /// The next `noisy` clients upload noise of an honest update's norm.
    pub noisy: usize,
}

/// What a client does with its update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Uploads its trained update, weighted by its example count.
    Honest,
    /// Uploads zeros and claims `secagg.max_weight` (inside its masked input).
    FreeRider,
    /// Uploads a random vector as long as its trained update.
    Noisy,
}

impl Adversaries {
    /// Client `c`'s behaviour.
    pub fn behaviour(&self, c: usize) -> Behaviour {
        if c < self.free_riders {
            Behaviour::FreeRider
        } else if c < self.free_riders + self.noisy {
            Behaviour::Noisy
        } else {
            Behaviour::Honest
        }
    }
}

/// One client's totals over the study.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Standing {
    /// The client's index.
    pub client: usize,
    /// What it did.
    pub behaviour: Behaviour,
    /// Rounds it was in.
    pub rounds: u32,
    /// The ledger's credit, summed over its rounds.
    pub ledger_credit: f64,
    /// Its leave-one-out contribution, summed over its rounds.
    pub leave_one_out: f64,
}

/// How one kind of adversary fared against the honest clients, per round taken part in.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdversaryFinding {
    /// Which kind.
    pub behaviour: Behaviour,
    /// Its mean ledger credit per round.
    pub ledger_credit_per_round: f64,
    /// The honest clients' median ledger credit per round.
    pub honest_median_ledger_credit_per_round: f64,
    /// Its mean leave-one-out contribution per round.
    pub leave_one_out_per_round: f64,
    /// The honest clients' median leave-one-out contribution per round.
    pub honest_median_leave_one_out_per_round: f64,
}

impl AdversaryFinding {
    /// Whether the ledger credits it less than the median honest client.
    pub fn ledger_tells(&self) -> bool {
        self.ledger_credit_per_round < self.honest_median_ledger_credit_per_round
    }

    /// Whether leave-one-out rates it below the median honest client.
    pub fn leave_one_out_tells(&self) -> bool {
        self.leave_one_out_per_round < self.honest_median_leave_one_out_per_round
    }
}

/// The study's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContributionReport {
    /// The experiment's id.
    pub experiment: String,
    /// The partition, as the experiment names it.
    pub partition: String,
    /// Rounds run.
    pub rounds: u32,
    /// Clients per round.
    pub clients_per_round: u32,
    /// The adversaries.
    pub adversaries: Adversaries,
    /// Held-out accuracy of the final model.
    pub final_accuracy: f32,
    /// Spearman's ρ between ledger credit and leave-one-out, every client that took part.
    pub spearman: Option<f64>,
    /// The same over the honest clients alone.
    pub spearman_honest: Option<f64>,
    /// One finding per kind of adversary present.
    pub findings: Vec<AdversaryFinding>,
    /// Every client that took part, by index.
    pub standings: Vec<Standing>,
}

/// Runs the study: `exp.task.rounds` rounds of FedAvg over `partitions` with `trainer`.
pub fn study(
    exp: &Experiment,
    trainer: &dyn LocalTrainer,
    partitions: &[Vec<usize>],
    adversaries: Adversaries,
) -> Result<ContributionReport, SimError> {
    exp.validate()?;
    let n = partitions.len();
    if adversaries.free_riders + adversaries.noisy >= n {
        return Err(ConfigError::Invalid {
            key: "--free-riders and --noisy".into(),
            value: format!("{} + {}", adversaries.free_riders, adversaries.noisy),
            allowed: format!("fewer than the {n} clients, so that some are honest"),
        }
        .into());
    }
    let per_round = (exp.task.selection.clients_per_round as usize).min(n);
    let seed = exp.run.seed;
    let threads = worker_threads(exp.run.threads);
    let max_weight = u64::from(exp.task.secagg.max_weight.max(1));
    let clip = exp.task.secagg.enabled.then_some(exp.task.secagg.clip);

    let mut global = trainer.init(seeds::derive(seed, Purpose::ModelInit, 0, 0));
    let mut loss_before = trainer.evaluate(&global)?.loss;
    let mut standings: Vec<Standing> = (0..n)
        .map(|client| Standing {
            client,
            behaviour: adversaries.behaviour(client),
            rounds: 0,
            ledger_credit: 0.0,
            leave_one_out: 0.0,
        })
        .collect();

    for round in 1..=exp.task.rounds {
        let r = u64::from(round);
        let mut members = sample(
            &mut seeds::rng(seed, Purpose::Contribution, r, 0),
            n,
            per_round,
        )
        .into_vec();
        members.sort_unstable();
        let trained = map_ordered(&members, threads, |&c| {
            trainer.train(
                c,
                &partitions[c],
                &global,
                seeds::derive(seed, Purpose::Training, c as u64, r),
            )
        });
        // Each member's upload (after clipping) and the weight it encodes with it.
        let mut uploads: Vec<(Vec<f32>, u64)> = Vec::with_capacity(members.len());
        for (&c, out) in members.iter().zip(trained) {
            let out = out?;
            let mut delta = out.delta;
            if let Some(clip) = clip {
                delta.iter_mut().for_each(|x| *x = x.clamp(-clip, clip));
            }
            let honest_weight = (out.examples as u64).min(max_weight);
            uploads.push(match adversaries.behaviour(c) {
                Behaviour::Honest => (delta, honest_weight),
                Behaviour::FreeRider => (vec![0.0; delta.len()], max_weight),
                Behaviour::Noisy => {
                    let mut rng = seeds::rng(seed, Purpose::Contribution, r, c as u64 + 1);
                    (noise_like(&delta, &mut rng), honest_weight)
                }
            });
        }
        let total: u64 = uploads.iter().map(|(_, w)| w).sum();
        let mut sum = vec![0.0f64; global.len()];
        for (delta, w) in &uploads {
            for (s, d) in sum.iter_mut().zip(delta) {
                *s += f64::from(*d) * *w as f64;
            }
        }
        let step = |without: Option<usize>| -> Vec<f32> {
            let (drop, w_drop) = match without {
                Some(i) => (Some(&uploads[i].0), uploads[i].1),
                None => (None, 0),
            };
            let weight = (total - w_drop) as f64;
            global
                .iter()
                .enumerate()
                .map(|(j, g)| {
                    let s = sum[j] - drop.map_or(0.0, |d| f64::from(d[j]) * w_drop as f64);
                    if weight > 0.0 {
                        g + (s / weight) as f32
                    } else {
                        *g
                    }
                })
                .collect()
        };
        let next = step(None);
        let loss_after = trainer.evaluate(&next)?.loss;
        let indices: Vec<usize> = (0..members.len()).collect();
        let without = map_ordered(&indices, threads, |&i| trainer.evaluate(&step(Some(i))));
        // What the coordinator knows: who is in the sum (the ledger splits equally).
        let named: Vec<String> = members.iter().map(|c| format!("client-{c}")).collect();
        let (_, _, credits) = credit_round(Some(loss_before), Some(loss_after), &named);
        for ((&c, credit), eval) in members.iter().zip(&credits).zip(without) {
            let s = &mut standings[c];
            s.rounds += 1;
            s.ledger_credit += credit.credit;
            s.leave_one_out += f64::from(eval?.loss) - f64::from(loss_after);
        }
        tracing::info!(round, loss = loss_after, "contribution study round");
        global = next;
        loss_before = loss_after;
    }

    let final_accuracy = trainer.evaluate(&global)?.accuracy;
    standings.retain(|s| s.rounds > 0);
    let spearman_of = |keep: &dyn Fn(&Standing) -> bool| {
        let (a, b): (Vec<f64>, Vec<f64>) = standings
            .iter()
            .filter(|s| keep(s))
            .map(|s| (s.ledger_credit, s.leave_one_out))
            .unzip();
        spearman(&a, &b)
    };
    let findings = [Behaviour::FreeRider, Behaviour::Noisy]
        .into_iter()
        .filter_map(|b| finding(&standings, b))
        .collect();
    Ok(ContributionReport {
        experiment: exp.task.id.clone(),
        partition: partition_name(exp),
        rounds: exp.task.rounds,
        clients_per_round: per_round as u32,
        adversaries,
        final_accuracy,
        spearman: spearman_of(&|_| true),
        spearman_honest: spearman_of(&|s| s.behaviour == Behaviour::Honest),
        findings,
        standings,
    })
}

/// A random vector with the L2 norm of `like` (uniform coordinates, rescaled).
fn noise_like(like: &[f32], rng: &mut impl Rng) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let mut v: Vec<f32> = like
        .iter()
        .map(|_| rng.random_range(-1.0f32..=1.0))
        .collect();
    let (target, got) = (norm(like), norm(&v));
    if got > 0.0 {
        let scale = (target / got) as f32;
        v.iter_mut().for_each(|x| *x *= scale);
    }
    v
}

fn finding(standings: &[Standing], behaviour: Behaviour) -> Option<AdversaryFinding> {
    let per_round = |s: &Standing, f: fn(&Standing) -> f64| f(s) / f64::from(s.rounds);
    let credit = |s: &Standing| s.ledger_credit;
    let loo = |s: &Standing| s.leave_one_out;
    let mean = |b: Behaviour, f: fn(&Standing) -> f64| {
        let v: Vec<f64> = standings
            .iter()
            .filter(|s| s.behaviour == b)
            .map(|s| per_round(s, f))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let honest_median = |f: fn(&Standing) -> f64| {
        median(
            standings
                .iter()
                .filter(|s| s.behaviour == Behaviour::Honest)
                .map(|s| per_round(s, f))
                .collect(),
        )
    };
    Some(AdversaryFinding {
        behaviour,
        ledger_credit_per_round: mean(behaviour, credit)?,
        honest_median_ledger_credit_per_round: honest_median(credit)?,
        leave_one_out_per_round: mean(behaviour, loo)?,
        honest_median_leave_one_out_per_round: honest_median(loo)?,
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn partition_name(exp: &Experiment) -> String {
    toml::Value::try_from(&exp.data.partition)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| format!("{:?}", exp.data.partition))
}

/// Spearman's rank correlation of `a` and `b` (ties get their mean rank); `None` when there
/// are fewer than two pairs or either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (a.len() as f64 + 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean).powi(2);
        vb += (y - mean).powi(2);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// 1-based ranks, ties sharing their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut out = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            out[i] = rank;
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_known_answers() {
        let close = |got: Option<f64>, want: f64| {
            let got = got.expect("defined");
            assert!((got - want).abs() < 1e-12, "{got} != {want}");
        };
        close(
            spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]),
            1.0,
        );
        close(spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]), -1.0);
        // Monotone but not linear: ranks only.
        close(spearman(&[1.0, 2.0, 3.0], &[1.0, 100.0, 101.0]), 1.0);
        // scipy.stats.spearmanr([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) = 0.8
        close(
            spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 1.0, 4.0, 3.0, 5.0]),
            0.8,
        );
        // Ties: scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]) = 0.9486832980505138
        close(
            spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]),
            0.9486832980505138,
        );
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0], &[1.0]), None);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0]), None);
    }

    #[test]
    fn ranks_share_ties() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }

    #[test]
    fn noise_keeps_the_norm() {
        let like = vec![3.0f32, 4.0, 0.0];
        let mut rng = seeds::rng(1, Purpose::Contribution, 1, 1);
        let v = noise_like(&like, &mut rng);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 5.0).abs() < 1e-4, "{norm}");
        assert_ne!(v, like);
    }

    #[test]
    fn adversaries_come_first() {
        let a = Adversaries {
            free_riders: 1,
            noisy: 2,
        };
        assert_eq!(a.behaviour(0), Behaviour::FreeRider);
        assert_eq!(a.behaviour(1), Behaviour::Noisy);
        assert_eq!(a.behaviour(2), Behaviour::Noisy);
        assert_eq!(a.behaviour(3), Behaviour::Honest);
    }
}
