//! Prometheus metrics: counters and gauges the scheduler and the connection handlers update,
//! registered with `prometheus-client` and served as `GET /metrics` by the owners' HTTP server
//! ([`crate::http`]) in the OpenMetrics text format.
//!
//! Every series about a task carries a `task` label (rounds, participants, dropouts, masked
//! bytes, round and phase times, federated evaluation), so two running tasks never mix their
//! figures. Connections and traffic by message kind are the coordinator's, not a task's, and
//! carry no `task` label.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::round_driver::RoundReport;
use cohort_net::quinn::Endpoint;
use cohort_task::evaluation::FederatedEvaluation;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a task-scoped series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The task id.
    pub task: String,
}

/// Labels of a phase-time series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The task id.
    pub task: String,
    /// The SecAgg+ phase.
    pub phase: String,
}

/// Labels of a traffic series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The message kind.
    pub kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Family<PhaseLabels, Histogram, fn() -> Histogram>;

fn phase_histogram() -> Histogram {
    // 10 ms to about 3 minutes.
    Histogram::new(exponential_buckets(0.01, 4.0, 8))
}

/// The coordinator's counters and gauges.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rounds_completed: Family<TaskLabels, Counter>,
    rounds_aborted: Family<TaskLabels, Counter>,
    participants: Family<TaskLabels, Counter>,
    dropouts: Family<TaskLabels, Counter>,
    masked_bytes: Family<TaskLabels, Counter>,
    last_round_seconds: Family<TaskLabels, FloatGauge>,
    phases: HistogramFamily,
    federated_accuracy: Family<TaskLabels, FloatGauge>,
    federated_loss: Family<TaskLabels, FloatGauge>,
    federated_clients: Family<TaskLabels, Gauge>,
    federated_examples: Family<TaskLabels, Gauge>,
    connections: Gauge,
    quic_connections: Gauge,
    /// The QUIC endpoint whose connections `quic_connections` counts, read when rendered.
    endpoint: OnceLock<Endpoint>,
    received_bytes: Family<KindLabels, Counter>,
    received_messages: Family<KindLabels, Counter>,
    sent_bytes: Family<KindLabels, Counter>,
    sent_messages: Family<KindLabels, Counter>,
    traffic: Mutex<Traffic>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let rounds_completed = Family::<TaskLabels, Counter>::default();
        let rounds_aborted = Family::<TaskLabels, Counter>::default();
        let participants = Family::<TaskLabels, Counter>::default();
        let dropouts = Family::<TaskLabels, Counter>::default();
        let masked_bytes = Family::<TaskLabels, Counter>::default();
        let last_round_seconds = Family::<TaskLabels, FloatGauge>::default();
        let phases: HistogramFamily = Family::new_with_constructor(phase_histogram);
        let federated_accuracy = Family::<TaskLabels, FloatGauge>::default();
        let federated_loss = Family::<TaskLabels, FloatGauge>::default();
        let federated_clients = Family::<TaskLabels, Gauge>::default();
        let federated_examples = Family::<TaskLabels, Gauge>::default();
        let connections = Gauge::default();
        let quic_connections = Gauge::default();
        let received_bytes = Family::<KindLabels, Counter>::default();
        let received_messages = Family::<KindLabels, Counter>::default();
        let sent_bytes = Family::<KindLabels, Counter>::default();
        let sent_messages = Family::<KindLabels, Counter>::default();
        registry.register(
            "cohort_rounds_completed",
            "Rounds that released a sum",
            rounds_completed.clone(),
        );
        registry.register(
            "cohort_rounds_aborted",
            "Round attempts that aborted",
            rounds_aborted.clone(),
        );
        registry.register(
            "cohort_participants",
            "Inputs aggregated, over all rounds",
            participants.clone(),
        );
        registry.register(
            "cohort_dropouts",
            "Selected clients whose input is not in the sum",
            dropouts.clone(),
        );
        registry.register(
            "cohort_masked_input_bytes",
            "Bytes of masked input received",
            masked_bytes.clone(),
        );
        registry.register(
            "cohort_last_round_seconds",
            "Wall time of the task's last finished round",
            last_round_seconds.clone(),
        );
        registry.register(
            "cohort_phase_seconds",
            "Time spent in each SecAgg+ phase",
            phases.clone(),
        );
        registry.register(
            "cohort_federated_eval_accuracy",
            "Example-weighted accuracy of the task's last federated evaluation (clients' local data)",
            federated_accuracy.clone(),
        );
        registry.register(
            "cohort_federated_eval_loss",
            "Example-weighted loss of the task's last federated evaluation (clients' local data)",
            federated_loss.clone(),
        );
        registry.register(
            "cohort_federated_eval_clients",
            "Clients counted in the task's last federated evaluation",
            federated_clients.clone(),
        );
        registry.register(
            "cohort_federated_eval_examples",
            "Examples counted in the task's last federated evaluation",
            federated_examples.clone(),
        );
        registry.register(
            "cohort_connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "cohort_quic_connections",
            "QUIC connections the endpoint holds (open, or closing and not yet drained)",
            quic_connections.clone(),
        );
        registry.register(
            "cohort_received_bytes",
            "Frame bytes received from clients, by message kind",
            received_bytes.clone(),
        );
        registry.register(
            "cohort_received_messages",
            "Frames received from clients, by message kind",
            received_messages.clone(),
        );
        registry.register(
            "cohort_sent_bytes",
            "Frame bytes sent to clients, by message kind",
            sent_bytes.clone(),
        );
        registry.register(
            "cohort_sent_messages",
            "Frames sent to clients, by message kind",
            sent_messages.clone(),
        );
        Self {
            registry,
            rounds_completed,
            rounds_aborted,
            participants,
            dropouts,
            masked_bytes,
            last_round_seconds,
            phases,
            federated_accuracy,
            federated_loss,
            federated_clients,
            federated_examples,
            connections,
            quic_connections,
            endpoint: OnceLock::new(),
            received_bytes,
            received_messages,
            sent_bytes,
            sent_messages,
            traffic: Mutex::new(Traffic::default()),
        }
    }
}

fn task(task: &str) -> TaskLabels {
    TaskLabels {
        task: task.to_string(),
    }
}

/// Bytes and messages per message kind, in one direction.
pub type TrafficByKind = BTreeMap<&'static str, KindTraffic>;

/// What crossed the session and weight streams, counted in whole frames (length prefix
/// included; QUIC and UDP overhead not included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// From clients, by `ClientMessage` kind.
    pub received: TrafficByKind,
    /// To clients, by `ServerMessage` kind (weight chunks are `Weights`).
    pub sent: TrafficByKind,
}

/// Bytes and messages of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindTraffic {
    /// Frame bytes.
    pub bytes: u64,
    /// Frames.
    pub messages: u64,
}

impl Traffic {
    /// `self - earlier`, kind by kind (for the traffic of an interval).
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        let diff = |now: &TrafficByKind, then: &TrafficByKind| {
            now.iter()
                .map(|(k, v)| {
                    let t = then.get(k).copied().unwrap_or_default();
                    (
                        *k,
                        KindTraffic {
                            bytes: v.bytes.saturating_sub(t.bytes),
                            messages: v.messages.saturating_sub(t.messages),
                        },
                    )
                })
                .collect()
        };
        Traffic {
            received: diff(&self.received, &earlier.received),
            sent: diff(&self.sent, &earlier.sent),
        }
    }
}

impl Metrics {
    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, opened: bool) {
        if opened {
            self.connections.inc();
        } else {
            self.connections.dec();
        }
    }

    /// Open client connections.
    pub fn connections(&self) -> i64 {
        self.connections.get()
    }

    /// Counts the connections of `endpoint` from now on ([`Metrics::quic_connections`]); the
    /// first endpoint given is kept.
    pub fn watch_endpoint(&self, endpoint: Endpoint) {
        let _ = self.endpoint.set(endpoint);
    }

    /// QUIC connections the watched endpoint holds, open or closing and not yet drained
    /// (`None` before [`Metrics::watch_endpoint`]). Above [`Metrics::connections`] by the
    /// connections still in their handshake or draining; a gap that keeps growing is
    /// connections kept after their sessions ended.
    pub fn quic_connections(&self) -> Option<usize> {
        self.endpoint.get().map(Endpoint::open_connections)
    }

    /// A round of `task_id` completed.
    pub fn round_completed(
        &self,
        task_id: &str,
        report: &RoundReport,
        participants: u32,
        dropouts: u32,
        took: Duration,
    ) {
        let labels = task(task_id);
        self.rounds_completed.get_or_create(&labels).inc();
        self.participants
            .get_or_create(&labels)
            .inc_by(u64::from(participants));
        self.dropouts
            .get_or_create(&labels)
            .inc_by(u64::from(dropouts));
        self.masked_bytes
            .get_or_create(&labels)
            .inc_by(report.masked_bytes);
        for (phase, d) in &report.phase_durations {
            self.phases
                .get_or_create(&PhaseLabels {
                    task: task_id.to_string(),
                    phase: format!("{phase:?}"),
                })
                .observe(d.as_secs_f64());
        }
        self.last_round_seconds
            .get_or_create(&labels)
            .set(took.as_secs_f64());
    }

    /// A round's federated evaluation (exported as the `cohort_federated_eval_*` gauges, which
    /// are absent for a task until its first one).
    pub fn federated_evaluation(&self, task_id: &str, evaluation: &FederatedEvaluation) {
        let labels = task(task_id);
        self.federated_accuracy
            .get_or_create(&labels)
            .set(f64::from(evaluation.accuracy));
        self.federated_loss
            .get_or_create(&labels)
            .set(f64::from(evaluation.loss));
        self.federated_clients
            .get_or_create(&labels)
            .set(i64::from(evaluation.clients));
        self.federated_examples
            .get_or_create(&labels)
            .set(i64::try_from(evaluation.examples).unwrap_or(i64::MAX));
    }

    /// A frame of `kind` and `bytes` arrived from a client.
    pub fn received(&self, kind: &'static str, bytes: usize) {
        let labels = KindLabels { kind: kind.into() };
        self.received_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
        self.received_messages.get_or_create(&labels).inc();
        let mut t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        let e = t.received.entry(kind).or_default();
        e.bytes += bytes as u64;
        e.messages += 1;
    }

    /// A frame of `kind` and `bytes` was written to a client.
    pub fn sent(&self, kind: &'static str, bytes: usize) {
        let labels = KindLabels { kind: kind.into() };
        self.sent_bytes.get_or_create(&labels).inc_by(bytes as u64);
        self.sent_messages.get_or_create(&labels).inc();
        let mut t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        let e = t.sent.entry(kind).or_default();
        e.bytes += bytes as u64;
        e.messages += 1;
    }

    /// The traffic so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An attempt of `task_id` aborted.
    pub fn round_aborted(&self, task_id: &str) {
        self.rounds_aborted.get_or_create(&task(task_id)).inc();
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        if let Some(n) = self.quic_connections() {
            self.quic_connections.set(n as i64);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_aggregation::secagg::Phase;

    fn report(masked_bytes: u64) -> RoundReport {
        RoundReport {
            outcome: Err(cohort_aggregation::secagg::AbortReason::NotEnoughShares {
                missing: 0,
                needed: 0,
            }),
            removed: Vec::new(),
            refused: 0,
            phase_durations: vec![(Phase::MaskedInput, Duration::from_millis(250))],
            masked_bytes,
        }
    }

    /// Two tasks' rounds are counted apart, each series labelled with its task; traffic is
    /// counted by kind.
    #[test]
    fn task_scoped_series_carry_the_task_label() {
        let metrics = Metrics::default();
        metrics.round_completed("a", &report(400), 4, 1, Duration::from_millis(1500));
        metrics.round_completed("a", &report(400), 3, 0, Duration::from_millis(500));
        metrics.round_completed("b", &report(80), 2, 0, Duration::from_secs(2));
        metrics.round_aborted("b");
        metrics.received("MaskedInput", 4_000);
        metrics.received("MaskedInput", 4_000);
        metrics.sent("Weights", 10);
        let text = metrics.render();
        for line in [
            "cohort_rounds_completed_total{task=\"a\"} 2",
            "cohort_rounds_completed_total{task=\"b\"} 1",
            "cohort_rounds_aborted_total{task=\"b\"} 1",
            "cohort_participants_total{task=\"a\"} 7",
            "cohort_dropouts_total{task=\"a\"} 1",
            "cohort_masked_input_bytes_total{task=\"b\"} 80",
            "cohort_last_round_seconds{task=\"a\"} 0.5",
            "cohort_phase_seconds_count{task=\"a\",phase=\"MaskedInput\"} 2",
            "cohort_received_bytes_total{kind=\"MaskedInput\"} 8000",
            "cohort_received_messages_total{kind=\"MaskedInput\"} 2",
            "cohort_sent_bytes_total{kind=\"Weights\"} 10",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        // Every series of a task-scoped family names its task.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let task_scoped = [
                "cohort_rounds",
                "cohort_participants",
                "cohort_dropouts",
                "cohort_masked",
                "cohort_last_round",
                "cohort_phase",
                "cohort_federated",
            ]
            .iter()
            .any(|p| line.starts_with(p));
            if task_scoped {
                assert!(line.contains("task=\""), "{line} has no task label");
            }
        }
        assert_eq!(metrics.traffic().received["MaskedInput"].messages, 2);
    }

    /// The federated-evaluation gauges appear after a task's first evaluation, with its values.
    #[test]
    fn exports_the_last_federated_evaluation_per_task() {
        let metrics = Metrics::default();
        assert!(!metrics.render().contains("cohort_federated_eval_accuracy{"));
        metrics.federated_evaluation(
            "digits",
            &FederatedEvaluation {
                clients: 4,
                examples: 400,
                loss: 0.5,
                accuracy: 0.75,
            },
        );
        let text = metrics.render();
        for line in [
            "cohort_federated_eval_accuracy{task=\"digits\"} 0.75",
            "cohort_federated_eval_loss{task=\"digits\"} 0.5",
            "cohort_federated_eval_clients{task=\"digits\"} 4",
            "cohort_federated_eval_examples{task=\"digits\"} 400",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        assert!(
            text.contains("# TYPE cohort_federated_eval_accuracy gauge"),
            "{text}"
        );
    }
}
