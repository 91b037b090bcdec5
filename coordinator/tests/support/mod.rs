//! A live coordinator with its HTTP server and loopback devices, and a small HTTP/1.1 client
//! over real TCP, for the API and console tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use cohort_coordinator::server::Coordinator;
use cohort_loopback::clients::{ClientHooks, DemoClient, server_config, spawn_client};
use cohort_loopback::synthetic::SyntheticTrainer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A task of `rounds` rounds for 4 devices: up to 4 inputs a round (at least 3, the minimum
/// cohort, once the 1 s selection window has passed).
pub fn task_toml(id: &str, rounds: u32) -> String {
    format!(
        r#"
id = "{id}"
rounds = {rounds}
evaluate_every = 1
[model]
input_shape = [4]
num_classes = 2
layers = [{{ type = "linear", out = 3 }}, {{ type = "relu" }}, {{ type = "linear", out = 2 }}]
[training]
epochs = 1
batch_size = 4
learning_rate = 0.1
[selection]
clients_per_round = 4
over_selection = 0.0
window_secs = 1
[secagg]
# Four devices a round with the consistency check (the default): a quorum of four.
dropout_fraction = 0.10
max_weight = 16
[deadlines]
advertise_keys = 20
share_keys = 20
masked_input = 20
unmask = 20
"#
    )
}

/// Server-side evaluation that needs no data: loss is the mean absolute weight, accuracy a
/// fixed 0.5 (the API only carries the numbers).
pub struct MeanAbs;

impl cohort_coordinator::scheduler::Evaluator for MeanAbs {
    fn evaluate(
        &self,
        weights: &[f32],
    ) -> Result<(f32, f32), cohort_coordinator::scheduler::EvaluationError> {
        let loss = weights.iter().map(|w| w.abs()).sum::<f32>() / weights.len().max(1) as f32;
        Ok((loss, 0.5))
    }
}

/// A coordinator with its HTTP server on a free port, and its owner token.
pub struct Live {
    pub coordinator: Coordinator,
    pub http: SocketAddr,
    pub token: String,
    pub root: PathBuf,
    pub clients: Vec<DemoClient>,
    _dir: Option<tempfile::TempDir>,
}

impl Live {
    pub async fn start() -> Live {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut live = Live::start_in(root).await;
        live._dir = Some(dir);
        live
    }

    pub async fn start_in(root: PathBuf) -> Live {
        let mut config =
            server_config(root.join("coordinator"), Some(std::sync::Arc::new(MeanAbs)));
        config.http_listen = Some("127.0.0.1:0".parse().unwrap());
        let coordinator = Coordinator::start(config).await.unwrap();
        let http = coordinator.http_addr.unwrap();
        let token = std::fs::read_to_string(root.join("coordinator/owner-token"))
            .unwrap()
            .trim()
            .to_string();
        Live {
            coordinator,
            http,
            token,
            root,
            clients: Vec::new(),
            _dir: None,
        }
    }

    /// Enrolls and runs `n` loopback devices with the synthetic trainer.
    pub async fn devices(&mut self, n: usize) {
        for i in 0..n {
            let c = spawn_client(
                &self.coordinator,
                &self.root,
                self.clients.len() + i,
                Box::new(SyntheticTrainer::new(i as u64, 10)),
                ClientHooks::default(),
            )
            .await
            .unwrap();
            self.clients.push(c);
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        request(self.http, "GET", path, Some(&self.token), None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Response {
        request(self.http, "POST", path, Some(&self.token), Some(body)).await
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        for c in &self.clients {
            c.handle.abort();
        }
        self.coordinator.shutdown();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The JSON error's code, checking the error's shape.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| m.len() > 10),
            "an error says what happened: {v}"
        );
        e["code"].as_str().unwrap().to_string()
    }
}

/// One HTTP/1.1 request over a fresh TCP connection (`Connection: close`).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Response {
    request_bytes(addr, method, path, token, body.map(str::as_bytes)).await
}

pub async fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    Response {
        status,
        headers,
        body,
    }
}

/// Waits for the scheduler's next completed round of any task; returns its number.
pub async fn next_round(
    events: &mut tokio::sync::broadcast::Receiver<cohort_coordinator::scheduler::TaskEvent>,
) -> u64 {
    use cohort_coordinator::scheduler::TaskEvent;
    loop {
        match events.recv().await {
            Ok(TaskEvent::RoundCompleted { round, .. }) => return round,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => panic!("the scheduler stopped: {e}"),
        }
    }
}

/// In-process fake devices (no QUIC, no burn): each checks in with the scheduler, runs every
/// SecAgg+ round it is given with an all-zero update of weight 1, and checks in again. They
/// have no identity keys: their task needs `secagg.consistency_check = false`.
pub fn fake_devices(
    scheduler: std::sync::Arc<cohort_coordinator::scheduler::Scheduler>,
    n: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    use cohort_aggregation::encoding::Quantizer;
    use cohort_aggregation::secagg::{ClientRound, ClientStep};
    use cohort_coordinator::round_driver::RoundInput;
    use cohort_coordinator::scheduler::{Member, Seat};
    use cohort_protocol::{CheckInResponse, ServerMessage};
    use cohort_task::cutoff::is_stop;
    use rand_chacha::rand_core::SeedableRng;
    use std::sync::{Arc, Mutex};
    (1..=n)
        .map(|conn| {
            let scheduler = scheduler.clone();
            tokio::spawn(async move {
                loop {
                    let (outbox, mut rx) = tokio::sync::mpsc::channel(64);
                    let seat: Arc<Mutex<Option<Seat>>> = Arc::default();
                    let account = format!("client{conn:03}");
                    let member = Member {
                        outbox,
                        seat: seat.clone(),
                        account: account.clone(),
                        known_identity_head: None,
                        has_device_key: false,
                        secagg_suites: Vec::new(),
                    };
                    match scheduler.check_in(conn, &account, None, None, member) {
                        CheckInResponse::Accepted { .. } => {}
                        CheckInResponse::ComeBackLater { retry_after_ms, .. } => {
                            tokio::time::sleep(std::time::Duration::from_millis(
                                retry_after_ms.min(300),
                            ))
                            .await;
                            continue;
                        }
                        other => panic!("unexpected check-in answer {other:?}"),
                    }
                    let mut round: Option<(ClientRound, Quantizer)> = None;
                    let mut stopped = false;
                    while let Some(message) = rx.recv().await {
                        if matches!(message, ServerMessage::Error(_)) {
                            break;
                        }
                        let Some(s) = seat.lock().unwrap().clone() else {
                            if let ServerMessage::RoundResult(_) = message {
                                break;
                            }
                            continue;
                        };
                        let reply = match (message, round.as_mut()) {
                            (ServerMessage::RoundConfig(c), None) => {
                                let q = Quantizer::new(c.params.encoding).unwrap();
                                let (client, first) =
                                    ClientRound::start(c, [conn as u8; 32]).unwrap();
                                round = Some((client, q));
                                Some(first)
                            }
                            (m, _) if is_stop(&m) => {
                                stopped = true;
                                None
                            }
                            (m, Some((client, q))) => match client.handle(m) {
                                Ok(ClientStep::Send(m)) => Some(m),
                                Ok(ClientStep::NeedInput) => {
                                    let len = client.params().vector_len as usize - 1;
                                    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(conn);
                                    let input = q.encode(&vec![0.0; len], 1, &mut rng).unwrap();
                                    client.provide_input(input).unwrap()
                                }
                                Ok(ClientStep::Finished(_)) | Err(_) => None,
                            },
                            _ => None,
                        };
                        if let Some(message) = reply
                            && !stopped
                        {
                            let _ = s
                                .inputs
                                .send(RoundInput::Message {
                                    from: s.index,
                                    message,
                                })
                                .await;
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
        })
        .collect()
}
