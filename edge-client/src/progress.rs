//! What the client tells the embedding program while it works ([`ClientProgress`] through a
//! [`ProgressListener`]), and how it is told to stop (the crate's stop signal, shared with the
//! learning crate's cancel flag so that a stop lands between two training steps).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohort_net::quinn::Connection;
use tokio::sync::Notify;

use crate::run::Participation;

/// What the client is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not started, or finished.
    Idle,
    /// Connecting and logging in.
    Connecting,
    /// Reading the device state and checking in.
    CheckingIn,
    /// Waiting: not eligible, not selected, or no task.
    Waiting,
    /// Downloading the round's global weights.
    DownloadingWeights,
    /// Training on the local examples.
    Training,
    /// Training is done; the secure-aggregation exchange goes on.
    Aggregating,
    /// Stopping after [`crate::client::EdgeClient::stop`].
    Stopping,
}

/// A progress report: the phase, training's position and the traffic so far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientProgress {
    /// What the client is doing.
    pub phase: Phase,
    /// The round, while in one (the coordinator's round id).
    pub round: Option<u64>,
    /// The training epoch, from 1 (0 outside training).
    pub epoch: u32,
    /// Epochs in this round.
    pub epochs: u32,
    /// Training steps (batches) done.
    pub step: u64,
    /// Training steps in this round.
    pub total_steps: u64,
    /// Bytes sent to the coordinator since the client was created (UDP payloads).
    pub bytes_sent: u64,
    /// Bytes received from it.
    pub bytes_received: u64,
}

impl Default for ClientProgress {
    fn default() -> Self {
        Self {
            phase: Phase::Idle,
            round: None,
            epoch: 0,
            epochs: 0,
            step: 0,
            total_steps: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }
}

/// Receives the client's progress and the outcome of each participation. Called from the
/// client's threads (training reports from the training thread), so it must return quickly
/// and never call back into the client except [`crate::client::EdgeClient::stop`] and
/// [`crate::client::EdgeClient::status`].
pub trait ProgressListener: Send + Sync {
    /// Progress: every change of phase, round or epoch, the last training step, and training
    /// steps in between at most every [`PROGRESS_INTERVAL`] ([`crate::client::EdgeClient::status`]
    /// always has the latest).
    fn on_progress(&self, progress: &ClientProgress);
    /// One check-in's outcome (a round contributed to, a wait, the task finished).
    fn on_participation(&self, _participation: &Participation) {}
}

/// The stop request: a flag (read by the training loop between steps) and a notification
/// (wakes whatever the client awaits).
#[derive(Clone, Debug, Default)]
pub(crate) struct StopSignal {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl StopSignal {
    /// Requests a stop; `false` when one was already requested.
    pub(crate) fn request(&self) -> bool {
        let first = !self.flag.swap(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        first
    }

    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub(crate) fn reset(&self) {
        self.flag.store(false, Ordering::SeqCst);
    }

    /// The flag, for the learning crate's cancel check.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// Resolves once a stop is requested.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// How often, at most, training steps are reported to the [`ProgressListener`] between the
/// reports that are always made (see [`ProgressListener::on_progress`]). Ten a second is more
/// than a progress bar needs; a report per step cost a Kotlin host (a JNA callback each) about
/// 0.2 ms, doubling the training time of a small model (`mobile/bench/host_overhead.sh`).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Whether `p` goes to the listener, `told` being the last report it was given and when.
fn worth_telling(
    told: Option<&(ClientProgress, Instant)>,
    p: &ClientProgress,
    now: Instant,
) -> bool {
    let Some((told, at)) = told else {
        return true;
    };
    told.phase != p.phase
        || told.round != p.round
        || told.epoch != p.epoch
        || (p.step == p.total_steps && told.step != p.step)
        || now.saturating_duration_since(*at) >= PROGRESS_INTERVAL
}

#[derive(Default)]
struct SinkState {
    last: ClientProgress,
    /// The last report the listener was given, and when.
    told: Option<(ClientProgress, Instant)>,
    conn: Option<Connection>,
    /// Traffic of the connections already closed.
    base_sent: u64,
    base_received: u64,
}

/// Where progress goes: the listener, and the last report for `status`.
#[derive(Clone, Default)]
pub(crate) struct ProgressSink {
    listener: Option<Arc<dyn ProgressListener>>,
    state: Arc<Mutex<SinkState>>,
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressSink")
            .field("listener", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

impl ProgressSink {
    pub(crate) fn new(listener: Option<Arc<dyn ProgressListener>>) -> Self {
        Self {
            listener,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection whose traffic is counted from now on.
    pub(crate) fn set_connection(&self, conn: Option<Connection>) {
        let mut s = self.lock();
        if let Some(old) = s.conn.take() {
            let st = old.stats();
            s.base_sent += st.udp_tx.bytes;
            s.base_received += st.udp_rx.bytes;
        }
        s.conn = conn;
    }

    /// The last report.
    pub(crate) fn last(&self) -> ClientProgress {
        self.lock().last
    }

    /// Reports `update` applied to the last report, with fresh traffic figures.
    pub(crate) fn report(&self, update: impl FnOnce(&mut ClientProgress)) {
        let p = {
            let mut s = self.lock();
            let mut p = s.last;
            update(&mut p);
            let (sent, received) = s.conn.as_ref().map_or((0, 0), |c| {
                let st = c.stats();
                (st.udp_tx.bytes, st.udp_rx.bytes)
            });
            p.bytes_sent = s.base_sent + sent;
            p.bytes_received = s.base_received + received;
            s.last = p;
            let now = Instant::now();
            if self.listener.is_none() || !worth_telling(s.told.as_ref(), &p, now) {
                return;
            }
            s.told = Some((p, now));
            p
        };
        if let Some(l) = &self.listener {
            l.on_progress(&p);
        }
    }

    /// A new phase (training position cleared outside training).
    pub(crate) fn phase(&self, phase: Phase, round: Option<u64>) {
        self.report(|p| {
            if phase != Phase::Training && phase != Phase::Aggregating {
                p.epoch = 0;
                p.epochs = 0;
                p.step = 0;
                p.total_steps = 0;
            }
            p.phase = phase;
            p.round = round;
        });
    }

    pub(crate) fn participation(&self, participation: &Participation) {
        if let Some(l) = &self.listener {
            l.on_participation(participation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn training(epoch: u32, step: u64) -> ClientProgress {
        ClientProgress {
            phase: Phase::Training,
            round: Some(7),
            epoch,
            epochs: 2,
            step,
            total_steps: 100,
            ..ClientProgress::default()
        }
    }

    #[test]
    fn steps_are_told_at_most_every_interval_and_changes_always() {
        let t0 = Instant::now();
        let soon = t0 + PROGRESS_INTERVAL / 2;
        let later = t0 + PROGRESS_INTERVAL;
        let told = (training(1, 10), t0);
        // Nothing told yet: the first report goes out.
        assert!(worth_telling(None, &training(1, 1), t0));
        // Steps within the interval do not; one an interval later does.
        assert!(!worth_telling(Some(&told), &training(1, 11), soon));
        assert!(worth_telling(Some(&told), &training(1, 11), later));
        // A new epoch, round or phase, and the last step, go out at once.
        assert!(worth_telling(Some(&told), &training(2, 51), soon));
        let next_round = ClientProgress {
            round: Some(8),
            ..training(1, 11)
        };
        assert!(worth_telling(Some(&told), &next_round, soon));
        let aggregating = ClientProgress {
            phase: Phase::Aggregating,
            ..training(2, 100)
        };
        assert!(worth_telling(Some(&told), &aggregating, soon));
        assert!(worth_telling(Some(&told), &training(2, 100), soon));
        // The last step is told once.
        let last = (training(2, 100), soon);
        assert!(!worth_telling(Some(&last), &training(2, 100), soon));
    }

    #[derive(Default)]
    struct Count(Mutex<Vec<ClientProgress>>);

    impl ProgressListener for Count {
        fn on_progress(&self, p: &ClientProgress) {
            self.0.lock().unwrap().push(*p);
        }
    }

    #[test]
    fn the_sink_keeps_every_step_for_status_and_tells_the_listener_less() {
        let listener = Arc::new(Count::default());
        let sink = ProgressSink::new(Some(listener.clone()));
        sink.phase(Phase::Training, Some(7));
        for step in 1..=100 {
            sink.report(|p| {
                p.epoch = 1;
                p.epochs = 1;
                p.step = step;
                p.total_steps = 100;
            });
        }
        assert_eq!(sink.last().step, 100, "status sees every step");
        let told = listener.0.lock().unwrap();
        // The phase change, the first step (a new epoch) and the last always; the others
        // only as the interval allows (all of them at most, on a very slow machine).
        assert_eq!(told[0].step, 0);
        assert_eq!(told[1].step, 1);
        assert_eq!(told.last().unwrap().step, 100);
        assert!(
            told.windows(2)
                .all(|w| w[0].step < w[1].step || w[0].phase != w[1].phase)
        );
    }
}
