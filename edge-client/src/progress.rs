//! What the client tells the embedding program while it works ([`ClientProgress`] through a
//! [`ProgressListener`]), and how it is told to stop (the crate's stop signal, shared with the
//! learning crate's cancel flag so that a stop lands between two training steps).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Progress: phase changes, every training step.
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

#[derive(Default)]
struct SinkState {
    last: ClientProgress,
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
