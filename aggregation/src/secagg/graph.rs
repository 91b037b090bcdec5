//! The SecAgg+ neighbour graph: who shares masks and secrets with whom.
//!
//! Following Bell et al. (2020) and fcp, the graph is a Harary graph H(k, n) (each of n positions
//! on a cycle linked to the k/2 nearest positions on each side, so every client has exactly k
//! neighbours) laid on a uniformly random permutation of the client indices 1..=n. The random
//! placement is what the security analysis needs: the server (which draws it) cannot be trusted to
//! choose it adversarially in the active model, but in the semi-honest model it simply draws it
//! from its seeded RNG. Small cohorts use the complete graph instead (see [`super::params`]).
//!
//! Only the permutation and its inverse are stored (2 × n `u32`), so n = 100,000 with k = 50
//! costs under a megabyte and a millisecond; [`NeighbourGraph::are_neighbours`] is O(1) and
//! [`NeighbourGraph::neighbours`] O(k log k).

use cohort_protocol::ClientIndex;
use rand::seq::SliceRandom;
use rand::{CryptoRng, RngCore};
use thiserror::Error;

/// Why a Harary graph could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GraphError {
    /// k was odd; H(k, n) with odd k needs a different construction that we do not use.
    #[error(
        "the neighbour count k = {k} must be even; use the parameters from choose_graph_params"
    )]
    OddDegree {
        /// The degree asked for.
        k: u32,
    },
    /// k was 0, so no client would have neighbours.
    #[error("the neighbour count k must be at least 2")]
    ZeroDegree,
    /// k ≥ n: not enough other clients; use the complete graph.
    #[error(
        "the neighbour count k = {k} must be below the number of clients n = {n}; use the \
         complete graph for small cohorts"
    )]
    DegreeTooLarge {
        /// The degree asked for.
        k: u32,
        /// The number of clients.
        n: u32,
    },
}

/// A k-regular neighbour graph over the client indices 1..=n.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourGraph {
    /// Number of clients.
    n: u32,
    /// Degree: k for a Harary graph, n − 1 for the complete graph.
    k: u32,
    /// `index_at[p]` is the client index at cycle position p (empty for the complete graph).
    index_at: Vec<u32>,
    /// `position_of[i − 1]` is the cycle position of client index i (empty for the complete graph).
    position_of: Vec<u32>,
}

impl NeighbourGraph {
    /// A Harary graph H(k, n) on a uniformly random permutation of 1..=n drawn from `rng`.
    ///
    /// # Errors
    ///
    /// [`GraphError::OddDegree`], [`GraphError::ZeroDegree`], [`GraphError::DegreeTooLarge`]
    /// (k ≥ n).
    pub fn harary<R: RngCore + CryptoRng>(n: u32, k: u32, rng: &mut R) -> Result<Self, GraphError> {
        if k == 0 {
            return Err(GraphError::ZeroDegree);
        }
        if k % 2 == 1 {
            return Err(GraphError::OddDegree { k });
        }
        if k >= n {
            return Err(GraphError::DegreeTooLarge { k, n });
        }
        let mut index_at: Vec<u32> = (1..=n).collect();
        index_at.shuffle(rng);
        let mut position_of = vec![0u32; n as usize];
        for (position, &index) in (0u32..).zip(&index_at) {
            position_of[(index - 1) as usize] = position;
        }
        Ok(Self {
            n,
            k,
            index_at,
            position_of,
        })
    }

    /// The complete graph on 1..=n (every client neighbours every other).
    pub fn complete(n: u32) -> Self {
        Self {
            n,
            k: n.saturating_sub(1),
            index_at: Vec::new(),
            position_of: Vec::new(),
        }
    }

    /// Whether this is the complete graph.
    pub fn is_complete(&self) -> bool {
        self.index_at.is_empty()
    }

    /// The neighbours of `u`, sorted, without `u`; empty if `u` is not in 1..=n.
    pub fn neighbours(&self, u: ClientIndex) -> Vec<ClientIndex> {
        let Some(position) = self.position(u) else {
            return Vec::new();
        };
        if self.is_complete() {
            return (1..=self.n)
                .filter(|&v| v != u.0)
                .map(ClientIndex)
                .collect();
        }
        let half = self.k / 2;
        let mut out: Vec<ClientIndex> = (1..=half)
            .flat_map(|d| {
                let right = (position + d) % self.n;
                let left = (position + self.n - d) % self.n;
                [right, left]
            })
            .map(|p| ClientIndex(self.index_at[p as usize]))
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether `u` and `v` are distinct neighbours; O(1).
    pub fn are_neighbours(&self, u: ClientIndex, v: ClientIndex) -> bool {
        let (Some(pu), Some(pv)) = (self.position(u), self.position(v)) else {
            return false;
        };
        if u == v {
            return false;
        }
        if self.is_complete() {
            return true;
        }
        let diff = pu.abs_diff(pv);
        let cyclic = diff.min(self.n - diff);
        cyclic <= self.k / 2
    }

    /// The degree k (n − 1 for the complete graph).
    pub fn degree(&self) -> u32 {
        self.k
    }

    /// The number of clients n.
    pub fn num_clients(&self) -> u32 {
        self.n
    }

    /// The cycle position of `u` (its index − 1 for the complete graph), if `u` is in 1..=n.
    fn position(&self, u: ClientIndex) -> Option<u32> {
        if u.0 == 0 || u.0 > self.n {
            return None;
        }
        if self.is_complete() {
            return Some(u.0 - 1);
        }
        Some(self.position_of[(u.0 - 1) as usize])
    }
}
