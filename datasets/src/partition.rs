//! Federated partitioners: which examples each simulated client holds.
//!
//! A partition is a `Vec<Vec<usize>>`: for each client, the indices of its examples in the
//! dataset (ascending). Indices, not copies, so 10,000 clients over MNIST cost a few hundred
//! kilobytes; [`crate::Dataset::subset`] materialises one client's share when it is needed.
//!
//! Every partitioner is deterministic for a given seed: randomness comes from a ChaCha8 stream
//! seeded with `seed`, consumed in a fixed order. The kinds:
//!
//! * [`PartitionSpec::Iid`]: a shuffle cut into `num_clients` parts whose sizes differ by at
//!   most one.
//! * [`PartitionSpec::Dirichlet`]: for every class, the class's examples (shuffled) are divided
//!   between the clients in proportions drawn from `Dirichlet(alpha, ..., alpha)` (Hsu, Qi and
//!   Brown 2019; the allocation of Flower's `DirichletPartitioner`). Small `alpha` gives each
//!   client few classes; large `alpha` tends to IID. Minimum size: every client must end with at
//!   least `min(10, len / num_clients)` examples (at least one). Up to
//!   [`DIRICHLET_ATTEMPTS`] fresh draws are tried, as Flower does; if none qualifies, the last
//!   draw is repaired by moving randomly chosen examples from the largest clients to the short
//!   ones, which keeps the skew while guaranteeing that no client is empty.
//! * [`PartitionSpec::Shards`]: McMahan et al. 2017: examples sorted by label are cut into
//!   `num_clients × per_client` contiguous shards of (nearly) equal size, and each client gets
//!   `per_client` shards at random (with 2, most clients see two classes).
//! * [`PartitionSpec::Natural`]: by the loader's group ids (FEMNIST writer, Shakespeare role).
//!   The distinct groups are shuffled and dealt round-robin, so each client holds one or more
//!   whole groups; asking for more clients than groups is an error.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::DataError;

/// Fresh Dirichlet draws tried before repairing the last one (Flower's default retry count).
pub const DIRICHLET_ATTEMPTS: usize = 10;

/// The minimum client size the Dirichlet partitioner aims for, when the data allow it.
pub const DIRICHLET_MIN_CLIENT_SIZE: usize = 10;

/// How to divide a dataset between clients. Serialised with a `kind` tag, e.g.
/// `{"kind": "dirichlet", "alpha": 0.5}` or `{"kind": "shards", "per_client": 2}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PartitionSpec {
    /// Uniformly at random, equal sizes.
    Iid,
    /// Per-class Dirichlet allocation with concentration `alpha` (> 0).
    Dirichlet {
        /// Concentration: small is skewed (0.1), large is close to IID (100).
        alpha: f64,
    },
    /// Label-sorted shards, `per_client` each.
    Shards {
        /// Shards per client (McMahan et al. use 2).
        per_client: usize,
    },
    /// Whole natural groups (writers, roles) per client.
    Natural,
}

impl PartitionSpec {
    /// Partitions `dataset` between `num_clients` clients. `groups` (one id per example) is
    /// required by [`PartitionSpec::Natural`] and ignored by the others.
    pub fn partition(
        &self,
        dataset: &Dataset,
        groups: Option<&[u32]>,
        num_clients: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>, DataError> {
        match *self {
            PartitionSpec::Iid => iid(dataset.len(), num_clients, seed),
            PartitionSpec::Dirichlet { alpha } => dirichlet(
                dataset.labels(),
                dataset.num_classes(),
                alpha,
                num_clients,
                seed,
            ),
            PartitionSpec::Shards { per_client } => {
                shards(dataset.labels(), per_client, num_clients, seed)
            }
            PartitionSpec::Natural => {
                let groups = groups.ok_or_else(|| {
                    DataError::partition(
                        "the natural partition needs group ids (writers or roles), and this dataset has none; use iid, dirichlet or shards",
                    )
                })?;
                if groups.len() != dataset.len() {
                    return Err(DataError::partition(format!(
                        "{} group ids for {} examples; pass the groups loaded with this dataset",
                        groups.len(),
                        dataset.len()
                    )));
                }
                natural(groups, num_clients, seed)
            }
        }
    }
}

fn check_sizes(len: usize, num_clients: usize, per_client: usize) -> Result<(), DataError> {
    if num_clients == 0 {
        return Err(DataError::partition(
            "num_clients is 0; ask for at least one client",
        ));
    }
    if num_clients.saturating_mul(per_client) > len {
        return Err(DataError::partition(format!(
            "{len} examples cannot give {num_clients} clients {per_client} each; use fewer clients"
        )));
    }
    Ok(())
}

fn sorted(mut parts: Vec<Vec<usize>>) -> Vec<Vec<usize>> {
    for p in &mut parts {
        p.sort_unstable();
    }
    parts
}

/// IID: a seeded shuffle of `0..len` cut into `num_clients` parts of sizes differing by at most
/// one. Needs `len >= num_clients`.
pub fn iid(len: usize, num_clients: usize, seed: u64) -> Result<Vec<Vec<usize>>, DataError> {
    check_sizes(len, num_clients, 1)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    let parts = (0..num_clients)
        .map(|c| order[c * len / num_clients..(c + 1) * len / num_clients].to_vec())
        .collect();
    Ok(sorted(parts))
}

/// Draws proportions from a symmetric Dirichlet(alpha) over `k` entries.
///
/// Gamma draws are made in log space (`Gamma(alpha) = Gamma(alpha + 1) · U^(1/alpha)`), because
/// for small alpha plain draws underflow to zero and every proportion would be 0/0.
fn dirichlet_proportions(
    rng: &mut ChaCha8Rng,
    gamma: &Gamma<f64>,
    alpha: f64,
    k: usize,
) -> Vec<f64> {
    let logs: Vec<f64> = (0..k)
        .map(|_| {
            let g: f64 = gamma.sample(rng);
            let u: f64 = 1.0 - rng.random::<f64>(); // in (0, 1]
            g.ln() + u.ln() / alpha
        })
        .collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / sum).collect()
}

/// Dirichlet(alpha) over labels (see the module docs for the allocation and the minimum size).
pub fn dirichlet(
    labels: &[u32],
    num_classes: u32,
    alpha: f64,
    num_clients: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, DataError> {
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(DataError::partition(format!(
            "dirichlet alpha is {alpha}; it must be a positive number (0.1 is skewed, 100 close to IID)"
        )));
    }
    check_sizes(labels.len(), num_clients, 1)?;
    let min_size = DIRICHLET_MIN_CLIENT_SIZE
        .min(labels.len() / num_clients)
        .max(1);
    let gamma = Gamma::new(alpha + 1.0, 1.0)
        .map_err(|e| DataError::partition(format!("dirichlet alpha {alpha} is unusable: {e}")))?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes as usize];
    for (i, &l) in labels.iter().enumerate() {
        if let Some(class) = by_class.get_mut(l as usize) {
            class.push(i);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut parts: Vec<Vec<usize>> = Vec::new();
    for _ in 0..DIRICHLET_ATTEMPTS {
        parts = vec![Vec::new(); num_clients];
        for class in &by_class {
            let mut members = class.clone();
            members.shuffle(&mut rng);
            let p = dirichlet_proportions(&mut rng, &gamma, alpha, num_clients);
            let n = members.len();
            let mut cumulative = 0.0;
            let mut start = 0usize;
            for (client, share) in p.iter().enumerate() {
                cumulative += share;
                let end = if client + 1 == num_clients {
                    n
                } else {
                    ((cumulative * n as f64).round() as usize).clamp(start, n)
                };
                parts[client].extend_from_slice(&members[start..end]);
                start = end;
            }
        }
        if parts.iter().all(|p| p.len() >= min_size) {
            return Ok(sorted(parts));
        }
    }
    repair_min_size(&mut parts, min_size, &mut rng);
    Ok(sorted(parts))
}

/// Moves random examples from the currently largest clients to those below `min_size`.
/// Terminates because the callers guarantee `total >= clients × min_size`.
fn repair_min_size(parts: &mut [Vec<usize>], min_size: usize, rng: &mut ChaCha8Rng) {
    // Max-heap of (size, lowest client id first); entries go stale as sizes change and are
    // refreshed when popped.
    let mut heap: BinaryHeap<(usize, Reverse<usize>)> = parts
        .iter()
        .enumerate()
        .map(|(c, p)| (p.len(), Reverse(c)))
        .collect();
    for short in 0..parts.len() {
        while parts[short].len() < min_size {
            let Some((size, Reverse(donor))) = heap.pop() else {
                return;
            };
            if size != parts[donor].len() {
                heap.push((parts[donor].len(), Reverse(donor)));
                continue;
            }
            if donor == short || size <= min_size {
                // Cannot happen when total >= clients × min_size; stop rather than loop.
                return;
            }
            let pick = rng.random_range(0..size);
            let moved = parts[donor].swap_remove(pick);
            parts[short].push(moved);
            heap.push((size - 1, Reverse(donor)));
        }
    }
}

/// Shards (McMahan et al. 2017): label-sorted examples cut into `num_clients × per_client`
/// shards, `per_client` random shards per client.
pub fn shards(
    labels: &[u32],
    per_client: usize,
    num_clients: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, DataError> {
    if per_client == 0 {
        return Err(DataError::partition(
            "shards per_client is 0; give each client at least one shard (McMahan et al. use 2)",
        ));
    }
    check_sizes(labels.len(), num_clients, per_client)?;
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by_key(|&i| labels[i]); // stable: ties keep dataset order
    let num_shards = num_clients * per_client;
    let mut shard_ids: Vec<usize> = (0..num_shards).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    shard_ids.shuffle(&mut rng);
    let n = labels.len();
    let parts = shard_ids
        .chunks(per_client)
        .map(|mine| {
            mine.iter()
                .flat_map(|&s| {
                    order[s * n / num_shards..(s + 1) * n / num_shards]
                        .iter()
                        .copied()
                })
                .collect()
        })
        .collect();
    Ok(sorted(parts))
}

/// Natural: whole groups per client (see the module docs).
pub fn natural(
    groups: &[u32],
    num_clients: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, DataError> {
    if num_clients == 0 {
        return Err(DataError::partition(
            "num_clients is 0; ask for at least one client",
        ));
    }
    let mut distinct: Vec<u32> = groups.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if num_clients > distinct.len() {
        return Err(DataError::partition(format!(
            "{num_clients} clients but only {} natural groups; ask for at most {} clients or use another partition",
            distinct.len(),
            distinct.len()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    distinct.shuffle(&mut rng);
    let mut client_of_group = std::collections::HashMap::with_capacity(distinct.len());
    for (position, &g) in distinct.iter().enumerate() {
        client_of_group.insert(g, position % num_clients);
    }
    let mut parts = vec![Vec::new(); num_clients];
    for (i, g) in groups.iter().enumerate() {
        if let Some(&c) = client_of_group.get(g) {
            parts[c].push(i);
        }
    }
    Ok(parts)
}
