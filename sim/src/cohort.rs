//! The population and one round's cohort: who exists (a partition and a device profile per
//! client, nothing more, so that 10,000 clients cost little memory), when each device checks in
//! and whom the production selector takes ([`CheckIns`]), and which selected clients will drop
//! out, at which phase, and how.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use cohort_task::selection::{CheckInDecision, SelectionPolicy, Selector};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

use crate::clock::{Micros, micros, seconds};
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
        let mut rng = seeds::rng(exp.run.seed, Purpose::Profiles, 0, 0);
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

/// A phase at which a client may drop out. With SecAgg+ these are R0 to R3 (R2.5, the
/// consistency check, only in rounds that run it; elsewhere a client fated to drop there
/// finishes the round); without SecAgg+, [`DropPhase::AdvertiseKeys`] and
/// [`DropPhase::ShareKeys`] fall before training and [`DropPhase::MaskedInput`] before the
/// upload, and [`DropPhase::ConsistencyCheck`] and [`DropPhase::Unmask`] have no effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropPhase {
    /// Before answering R0.
    AdvertiseKeys = 0,
    /// Before answering R1.
    ShareKeys = 1,
    /// Before sending the (masked) update.
    MaskedInput = 2,
    /// Before answering R2.5 (signing the survivor set).
    ConsistencyCheck = 3,
    /// Before answering R3.
    Unmask = 4,
}

impl DropPhase {
    /// All phases, in order.
    pub const ALL: [DropPhase; 5] = [
        DropPhase::AdvertiseKeys,
        DropPhase::ShareKeys,
        DropPhase::MaskedInput,
        DropPhase::ConsistencyCheck,
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
    /// Population indices of the selected clients, in check-in order; cohort position i is
    /// `ClientIndex(i + 1)`.
    pub members: Vec<usize>,
    /// Their fates, by cohort position.
    pub fates: Vec<Fate>,
    /// When the cohort was complete and the attempt starts.
    pub start: Micros,
}

/// A check-in due: (time, client). Ordered by time, then client, so that simultaneous
/// check-ins are handled in a fixed order.
type Due = Reverse<(Micros, u32)>;

/// The devices' check-ins and the coordinator's production [`Selector`], on the virtual clock.
///
/// Every client checks in for the first time at a uniform time within the first selection
/// window. At a check-in it is eligible with `availability.online_probability`; an ineligible
/// client checks in again after 0.5 to 1.5 selection windows. An eligible one is answered by
/// the selector exactly as the coordinator answers it: selected into the cohort being
/// assembled, or told when to come back (pace steering while a round runs, and the half-window
/// wait of the last round's members), and it comes back then. A round's members check in again
/// one link latency after the attempt ends. So the simulator selects the way a deployment does,
/// including who gets selected again soon, instead of drawing a uniform cohort.
pub struct CheckIns {
    due: BinaryHeap<Due>,
    selector: Selector<usize>,
    window: Micros,
    online: f64,
    rng: ChaCha20Rng,
}

impl CheckIns {
    /// Every client's first check-in, and a selector for the experiment's task.
    pub fn new(exp: &Experiment, population: usize) -> Self {
        let policy = SelectionPolicy::for_task(&exp.task);
        let window = micros(policy.window.as_secs_f64()).max(1);
        let mut rng = seeds::rng(exp.run.seed, Purpose::Selection, 0, 0);
        let due = (0..population)
            .map(|c| Reverse((rng.random_range(0..window), c as u32)))
            .collect();
        Self {
            due,
            // The first estimate of a round's length: the selection window, as a coordinator
            // that knows nothing of its devices yet would guess.
            selector: Selector::new(policy, policy.window),
            window,
            online: exp.availability.online_probability,
            rng,
        }
    }

    /// Runs check-ins from `now` until the selector hands over a cohort, or until `give_up`
    /// passes (no cohort could form: `None`).
    pub fn select(&mut self, now: Micros, give_up: Micros) -> Option<(Vec<usize>, Micros)> {
        let mut now = now;
        loop {
            if let Some(cohort) = self.selector.poll(as_duration(now)) {
                return Some((cohort, now));
            }
            let timeout = self
                .selector
                .poll_timeout()
                .map(|d| micros(d.as_secs_f64()));
            let next = self.due.peek().map(|Reverse((t, _))| *t);
            match (timeout, next) {
                (Some(t), n) if n.is_none_or(|n| t <= n) => {
                    now = now.max(t);
                    continue;
                }
                (_, Some(t)) if t <= give_up => {
                    now = now.max(t);
                    self.check_in_next();
                }
                _ => return None,
            }
        }
    }

    /// Handles the earliest due check-in.
    fn check_in_next(&mut self) {
        let Some(Reverse((t, c))) = self.due.pop() else {
            return;
        };
        if !self.rng.random_bool(self.online) {
            let later = t + micros(seconds(self.window) * self.rng.random_range(0.5..1.5));
            self.due.push(Reverse((later, c)));
            return;
        }
        let jitter: f64 = self.rng.random();
        match self.selector.check_in(c as usize, as_duration(t), jitter) {
            CheckInDecision::Selected => {}
            CheckInDecision::ComeBackLater(after) => {
                let back = t + micros(after.as_secs_f64()).max(1);
                self.due.push(Reverse((back, c)));
            }
        }
    }

    /// The attempt that started at `start` with `members` ended at `end`: the check-ins that
    /// fell while it ran are answered (come back later), selection reopens, and the members
    /// check in again one link latency later.
    pub fn round_ended(
        &mut self,
        start: Micros,
        end: Micros,
        members: &[usize],
        latency: impl Fn(usize) -> Micros,
    ) {
        while self.due.peek().is_some_and(|Reverse((t, _))| *t < end) {
            self.check_in_next();
        }
        self.selector
            .round_finished(as_duration(end.saturating_sub(start)));
        for &c in members {
            self.due.push(Reverse((end + latency(c), c as u32)));
        }
    }
}

fn as_duration(t: Micros) -> Duration {
    Duration::from_micros(t)
}

/// Draws the fate of each member of attempt `attempt` of round `round`, phase by phase.
pub fn draw_fates(exp: &Experiment, members: usize, round: u32, attempt: u32) -> Vec<Fate> {
    let key = (u64::from(round) << 32) | u64::from(attempt);
    let mut rng = seeds::rng(exp.run.seed, Purpose::Dropouts, key, 0);
    // R2.5 draws come from a stream of their own, so that the fates drawn before R2.5 existed
    // (and every fate when its probability is 0) are unchanged.
    let mut r25 = seeds::rng(exp.run.seed, Purpose::Dropouts, key, 1);
    (0..members)
        .map(|_| draw_fate(&exp.availability, &mut rng, &mut r25))
        .collect()
}

fn draw_fate<R: Rng>(a: &AvailabilityConfig, rng: &mut R, r25: &mut R) -> Fate {
    let probs = [
        a.dropout.advertise_keys,
        a.dropout.share_keys,
        a.dropout.masked_input,
        a.dropout.consistency_check,
        a.dropout.unmask,
    ];
    // Always draw all the numbers so one client's fate never shifts another's.
    let [r0, r1, r2, r3]: [f64; 4] = std::array::from_fn(|_| rng.random());
    let disconnect = rng.random::<f64>() < a.disconnect_fraction;
    let draws = [r0, r1, r2, r25.random(), r3];
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

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(online: f64, over: f64) -> Experiment {
        let mut exp = Experiment::default_experiment();
        exp.population.num_clients = 100;
        exp.task.selection.clients_per_round = 20;
        exp.task.selection.over_selection = over;
        exp.task.selection.window_secs = 30.0;
        exp.availability.online_probability = online;
        // Selection only: the 30% over-selection drawn here at dropout fraction 0.3 leaves no
        // parameters with the consistency check.
        exp.task.secagg.consistency_check = false;
        exp.validate().unwrap();
        exp
    }

    const LATENCY: Micros = 20_000;

    /// Rounds of `round_s` simulated seconds, back to back: the cohorts and their start times.
    fn rounds(exp: &Experiment, n: usize, round_s: f64) -> Vec<(Vec<usize>, Micros)> {
        let mut check_ins = CheckIns::new(exp, 100);
        let mut now = 0;
        let mut out = Vec::new();
        for _ in 0..n {
            let (members, start) = check_ins.select(now, Micros::MAX).expect("a cohort forms");
            let end = start + micros(round_s);
            check_ins.round_ended(start, end, &members, |_| LATENCY);
            now = end;
            out.push((members, start));
        }
        out
    }

    #[test]
    fn cohorts_have_the_selection_size_and_no_duplicates() {
        for (over, size) in [(0.0, 20), (0.3, 26)] {
            for (members, _) in rounds(&experiment(0.9, over), 8, 40.0) {
                assert_eq!(members.len(), size);
                let mut sorted = members.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), size, "a client selected twice: {members:?}");
                assert!(members.iter().all(|&c| c < 100));
            }
        }
    }

    /// The production selector's wait: a round's members check in again at once, but the
    /// others take the next cohort while they wait half a window. (First come, first served
    /// would pick the same clients again.)
    #[test]
    fn the_last_rounds_members_are_not_selected_again_at_once() {
        // Short rounds: the members are back long before the others' retry times.
        let cohorts = rounds(&experiment(1.0, 0.0), 6, 2.0);
        for pair in cohorts.windows(2) {
            let (last, _) = &pair[0];
            let (next, _) = &pair[1];
            let again = next.iter().filter(|c| last.contains(c)).count();
            assert_eq!(again, 0, "{last:?} then {next:?}");
        }
        // Over six rounds (120 seats), most of the population took part, not a fixed few.
        let mut seen: Vec<usize> = cohorts.iter().flat_map(|(m, _)| m.clone()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() >= 70, "{} distinct clients", seen.len());
    }

    /// Selection takes simulated time: the first cohort forms once enough devices checked in
    /// within the first window, and with few eligible devices it takes longer.
    #[test]
    fn selection_waits_for_check_ins_and_is_reproducible() {
        let first = rounds(&experiment(1.0, 0.0), 3, 40.0);
        let start = first[0].1;
        assert!(start > 0 && start <= micros(30.0), "{start}");
        assert_eq!(first, rounds(&experiment(1.0, 0.0), 3, 40.0));
        let scarce = rounds(&experiment(0.2, 0.0), 1, 40.0);
        assert!(scarce[0].1 > start, "{} vs {start}", scarce[0].1);
        // No cohort before the time limit: given up.
        let mut check_ins = CheckIns::new(&experiment(1.0, 0.0), 100);
        assert_eq!(check_ins.select(0, 1), None);
    }
}
