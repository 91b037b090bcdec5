//! The population and one round's cohort: who exists (a partition and a device profile per
//! client, nothing more, so that 10,000 clients cost little memory), who is online and selected
//! for an attempt, and which selected clients will drop out, at which phase, and how.

use rand::Rng;
use rand::seq::index;

use crate::config::{AvailabilityConfig, Experiment};
use crate::network::{DeviceProfile, ProfileMix};
use crate::seeds::{self, Purpose};

/// Every simulated client: its examples and its device.
pub struct Population {
    /// Per client, the indices of its training examples.
    pub partitions: Vec<Vec<usize>>,
    /// Per client, its index in [`Self::mix`].
    pub profiles: Vec<u8>,
    /// The profiles the clients drew from.
    pub mix: ProfileMix,
}

impl Population {
    /// Assigns device profiles to `partitions.len()` clients, from the run's seed.
    pub fn new(exp: &Experiment, partitions: Vec<Vec<usize>>) -> Self {
        let mix = ProfileMix::new(&exp.network.profiles);
        let mut rng = seeds::rng(exp.seed, Purpose::Profiles, 0, 0);
        let profiles = (0..partitions.len()).map(|_| mix.draw(&mut rng)).collect();
        Self {
            partitions,
            profiles,
            mix,
        }
    }

    /// Client `c`'s device.
    pub fn profile(&self, c: usize) -> &'static DeviceProfile {
        self.mix.get(self.profiles[c])
    }

    /// The number of clients.
    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    /// Whether there are no clients.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// The largest client's example count.
    pub fn max_examples(&self) -> usize {
        self.partitions.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// A phase at which a client may drop out. With SecAgg+ these are R0 to R3; without it,
/// [`DropPhase::AdvertiseKeys`] and [`DropPhase::ShareKeys`] fall before training and
/// [`DropPhase::MaskedInput`] before the upload, and [`DropPhase::Unmask`] has no effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropPhase {
    /// Before answering R0.
    AdvertiseKeys = 0,
    /// Before answering R1.
    ShareKeys = 1,
    /// Before sending the (masked) update.
    MaskedInput = 2,
    /// Before answering R3.
    Unmask = 3,
}

impl DropPhase {
    /// All phases, in order.
    pub const ALL: [DropPhase; 4] = [
        DropPhase::AdvertiseKeys,
        DropPhase::ShareKeys,
        DropPhase::MaskedInput,
        DropPhase::Unmask,
    ];
}

/// What will happen to one selected client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fate {
    /// Where it dies, if it does.
    pub drop_at: Option<DropPhase>,
    /// Whether it closes its connection (the server learns at once) rather than going silent.
    pub disconnect: bool,
}

impl Fate {
    /// Whether the client gets as far as sending its update.
    pub fn uploads(&self) -> bool {
        !matches!(
            self.drop_at,
            Some(DropPhase::AdvertiseKeys | DropPhase::ShareKeys | DropPhase::MaskedInput)
        )
    }

    /// Whether the client dies at `phase`.
    pub fn dies_at(&self, phase: DropPhase) -> bool {
        self.drop_at == Some(phase)
    }
}

/// One attempt's cohort: population indices in selection order, and their fates.
#[derive(Clone, Debug, PartialEq)]
pub struct Cohort {
    /// Population indices of the selected clients; cohort position i is `ClientIndex(i + 1)`.
    pub members: Vec<usize>,
    /// Their fates, by cohort position.
    pub fates: Vec<Fate>,
    /// How many clients were online.
    pub online: usize,
}

/// Selects the cohort of attempt `attempt` of round `round`: each client is online with the
/// configured probability, and [`Experiment::selected_per_round`] of the online ones
/// (`clients_per_round`, plus the over-selection) are drawn uniformly (all of them when fewer
/// are online). Then each member's fate is drawn phase by phase.
pub fn select(exp: &Experiment, population: usize, round: u32, attempt: u32) -> Cohort {
    let key = (u64::from(round) << 32) | u64::from(attempt);
    let mut rng = seeds::rng(exp.seed, Purpose::Selection, key, 0);
    let p = exp.availability.online();
    let online: Vec<usize> = if p >= 1.0 {
        (0..population).collect()
    } else {
        (0..population).filter(|_| rng.random_bool(p)).collect()
    };
    let want = usize::try_from(exp.selected_per_round())
        .unwrap_or(usize::MAX)
        .min(online.len());
    let mut picked: Vec<usize> = index::sample(&mut rng, online.len(), want)
        .into_iter()
        .map(|i| online[i])
        .collect();
    picked.sort_unstable();
    let mut fate_rng = seeds::rng(exp.seed, Purpose::Dropouts, key, 0);
    let fates = picked
        .iter()
        .map(|_| draw_fate(&exp.availability, &mut fate_rng))
        .collect();
    Cohort {
        members: picked,
        fates,
        online: online.len(),
    }
}

fn draw_fate<R: Rng>(a: &AvailabilityConfig, rng: &mut R) -> Fate {
    let probs = [
        a.dropout.advertise_keys,
        a.dropout.share_keys,
        a.dropout.masked_input,
        a.dropout.unmask,
    ];
    // Always draw all five numbers so one client's fate never shifts another's.
    let draws: [f64; 4] = std::array::from_fn(|_| rng.random());
    let disconnect = rng.random::<f64>() < a.disconnect_fraction;
    let drop_at = DropPhase::ALL
        .into_iter()
        .zip(probs.iter().zip(draws))
        .find(|(_, (p, x))| *x < **p)
        .map(|(phase, _)| phase);
    Fate {
        drop_at,
        disconnect,
    }
}
