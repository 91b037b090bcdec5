//! Prometheus metrics: counters the scheduler and the connection handlers update, rendered in
//! the text exposition format by a tiny HTTP/1.1 responder on a [`TcpListener`] (no framework:
//! it answers `GET /metrics` and nothing else).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::round_driver::RoundReport;
use cohort_task::evaluation::FederatedEvaluation;

/// The coordinator's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    rounds_completed: AtomicU64,
    rounds_aborted: AtomicU64,
    participants: AtomicU64,
    dropouts: AtomicU64,
    masked_bytes: AtomicU64,
    connections: AtomicU64,
    /// Sum of seconds and count per phase name.
    phases: Mutex<Vec<(String, f64, u64)>>,
    last_round_seconds: Mutex<f64>,
    traffic: Mutex<Traffic>,
    last_federated_evaluation: Mutex<Option<FederatedEvaluation>>,
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
            self.connections.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A round completed.
    pub fn round_completed(
        &self,
        report: &RoundReport,
        participants: u32,
        dropouts: u32,
        took: Duration,
    ) {
        self.rounds_completed.fetch_add(1, Ordering::Relaxed);
        self.participants
            .fetch_add(u64::from(participants), Ordering::Relaxed);
        self.dropouts
            .fetch_add(u64::from(dropouts), Ordering::Relaxed);
        self.masked_bytes
            .fetch_add(report.masked_bytes, Ordering::Relaxed);
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        for (phase, d) in &report.phase_durations {
            let name = format!("{phase:?}");
            match phases.iter_mut().find(|(n, _, _)| *n == name) {
                Some(entry) => {
                    entry.1 += d.as_secs_f64();
                    entry.2 += 1;
                }
                None => phases.push((name, d.as_secs_f64(), 1)),
            }
        }
        *self
            .last_round_seconds
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = took.as_secs_f64();
    }

    /// A round's federated evaluation (exported as the `cohort_federated_eval_*` gauges, which
    /// are absent until the first one).
    pub fn federated_evaluation(&self, evaluation: &FederatedEvaluation) {
        *self
            .last_federated_evaluation
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(*evaluation);
    }

    /// A frame of `kind` and `bytes` arrived from a client.
    pub fn received(&self, kind: &'static str, bytes: usize) {
        let mut t = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        let e = t.received.entry(kind).or_default();
        e.bytes += bytes as u64;
        e.messages += 1;
    }

    /// A frame of `kind` and `bytes` was written to a client.
    pub fn sent(&self, kind: &'static str, bytes: usize) {
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

    /// A round aborted.
    pub fn round_aborted(&self) {
        self.rounds_aborted.fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "cohort_rounds_completed_total",
                "Rounds that released a sum.",
                &self.rounds_completed,
            ),
            (
                "cohort_rounds_aborted_total",
                "Round attempts that aborted.",
                &self.rounds_aborted,
            ),
            (
                "cohort_participants_total",
                "Inputs aggregated, over all rounds.",
                &self.participants,
            ),
            (
                "cohort_dropouts_total",
                "Selected clients whose input is not in the sum.",
                &self.dropouts,
            ),
            (
                "cohort_masked_input_bytes_total",
                "Bytes of masked input received.",
                &self.masked_bytes,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cohort_connections Open client connections.\n# TYPE cohort_connections gauge\ncohort_connections {}",
            self.connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cohort_last_round_seconds Wall time of the last finished round.\n# TYPE cohort_last_round_seconds gauge\ncohort_last_round_seconds {}",
            *self
                .last_round_seconds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        );
        let federated = *self
            .last_federated_evaluation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(f) = federated {
            let gauges = [
                (
                    "cohort_federated_eval_accuracy",
                    "Example-weighted accuracy of the last federated evaluation (clients' local data).",
                    f64::from(f.accuracy),
                ),
                (
                    "cohort_federated_eval_loss",
                    "Example-weighted loss of the last federated evaluation (clients' local data).",
                    f64::from(f.loss),
                ),
                (
                    "cohort_federated_eval_clients",
                    "Clients counted in the last federated evaluation.",
                    f64::from(f.clients),
                ),
                (
                    "cohort_federated_eval_examples",
                    "Examples counted in the last federated evaluation.",
                    f.examples as f64,
                ),
            ];
            for (name, help, v) in gauges {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP cohort_phase_seconds Time spent in each SecAgg+ phase.\n# TYPE cohort_phase_seconds summary"
        );
        for (phase, sum, count) in self.phases.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "cohort_phase_seconds_sum{{phase=\"{phase}\"}} {sum}");
            let _ = writeln!(
                out,
                "cohort_phase_seconds_count{{phase=\"{phase}\"}} {count}"
            );
        }
        let traffic = self.traffic();
        for (name, help, by_kind) in [
            (
                "cohort_received",
                "Frames received from clients, by message kind.",
                &traffic.received,
            ),
            (
                "cohort_sent",
                "Frames sent to clients, by message kind.",
                &traffic.sent,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name}_bytes_total {help}\n# TYPE {name}_bytes_total counter"
            );
            for (kind, t) in by_kind {
                let _ = writeln!(out, "{name}_bytes_total{{kind=\"{kind}\"}} {}", t.bytes);
            }
            let _ = writeln!(
                out,
                "# HELP {name}_messages_total {help}\n# TYPE {name}_messages_total counter"
            );
            for (kind, t) in by_kind {
                let _ = writeln!(
                    out,
                    "{name}_messages_total{{kind=\"{kind}\"}} {}",
                    t.messages
                );
            }
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Anything else gets a 404.
pub async fn serve_metrics(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let response = if request.starts_with("GET /metrics ") {
                let body = metrics.render();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_text_format_over_http() {
        let metrics = std::sync::Arc::new(Metrics::default());
        metrics.round_aborted();
        metrics.received("MaskedInput", 4_000);
        metrics.received("MaskedInput", 4_000);
        metrics.sent("Weights", 10);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_metrics(listener, metrics));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains("cohort_rounds_aborted_total 1"), "{body}");
        assert!(
            body.contains("cohort_received_bytes_total{kind=\"MaskedInput\"} 8000"),
            "{body}"
        );
        assert!(
            body.contains("cohort_received_messages_total{kind=\"MaskedInput\"} 2"),
            "{body}"
        );
        assert!(
            body.contains("cohort_sent_bytes_total{kind=\"Weights\"} 10"),
            "{body}"
        );
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 404"), "{body}");
        server.abort();
    }
}

#[cfg(test)]
mod federated_tests {
    use super::*;

    /// The federated-evaluation gauges appear after the first evaluation, with its values.
    #[test]
    fn exports_the_last_federated_evaluation() {
        let metrics = Metrics::default();
        assert!(!metrics.render().contains("cohort_federated_eval"));
        metrics.federated_evaluation(&FederatedEvaluation {
            clients: 4,
            examples: 400,
            loss: 0.5,
            accuracy: 0.75,
        });
        let text = metrics.render();
        assert!(
            text.contains("cohort_federated_eval_accuracy 0.75\n"),
            "{text}"
        );
        assert!(text.contains("cohort_federated_eval_loss 0.5\n"), "{text}");
        assert!(text.contains("cohort_federated_eval_clients 4\n"), "{text}");
        assert!(
            text.contains("# TYPE cohort_federated_eval_accuracy gauge"),
            "{text}"
        );
    }
}
