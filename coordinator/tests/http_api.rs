//! The owners' HTTP API against a real coordinator (QUIC endpoint, scheduler, SQLite) with
//! loopback devices, over real TCP: the task lifecycle with live rounds, refusals that change
//! nothing, the audit table, the owner token file, `/metrics` with task labels, server-sent
//! events, and the OpenAPI file against the router.

mod support;

use cohort_coordinator::http::tokens::{self, ApiRole};
use cohort_coordinator::states::TaskState;
use support::{Live, next_round, request, task_toml};

/// A refused request: method, path, token, body, expected status and error code.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);

/// The whole life of a task driven through the API while devices train: create, start,
/// rounds complete (rounds, metrics, log, checkpoints and `/metrics` show them), pause (the
/// loop ends), resume (rounds continue after the log's head), stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_pauses_resumes_and_stops_through_the_api() {
    let mut live = Live::start().await;
    let mut events = live.coordinator.scheduler.subscribe();
    live.devices(4).await;

    let r = live.post("/api/v1/tasks", &task_toml("api", 1000)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["state"], "created");
    let r = live.get("/api/v1/tasks").await;
    assert_eq!(r.json()["tasks"][0]["id"], "api");
    assert_eq!(r.json()["tasks"][0]["rounds"], 1000);

    let r = live.post("/api/v1/tasks/api/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "running");
    assert_eq!(r.json()["previous"], "created");
    let first = next_round(&mut events).await;
    assert_eq!(first, 1);
    next_round(&mut events).await;

    let show = live.get("/api/v1/tasks/api").await.json();
    assert_eq!(show["state"], "running");
    assert!(show["rounds_done"].as_u64().unwrap() >= 2, "{show}");
    assert!(
        show["definition"]
            .as_str()
            .unwrap()
            .contains("clients_per_round = 4")
    );
    assert_eq!(show["model"]["parameters"], 4 * 3 + 3 + 3 * 2 + 2);
    assert!(show["live"]["status"]["phase"].is_string(), "{show}");

    let rounds = live.get("/api/v1/tasks/api/rounds").await.json();
    let r1 = &rounds["rounds"][0];
    assert_eq!(r1["round"], 1);
    assert_eq!(r1["state"], "finished");
    // Four devices, a 1 s window: a round sums 3 (the minimum cohort) or 4 inputs.
    let summed = r1["participants"].as_u64().unwrap();
    assert!((3..=4).contains(&summed), "{r1}");
    assert_eq!(r1["selected"], summed, "no over-selection");
    assert!(r1["metrics"]["took_ms"].is_u64(), "{r1}");
    assert!(r1["metrics"]["loss"].is_number(), "{r1}");

    let metrics = live.get("/api/v1/tasks/api/metrics").await.json();
    let loss = metrics["series"]["eval_loss"].as_array().unwrap();
    assert!(loss.len() >= 2, "{metrics}");
    assert_eq!(loss[0]["round"], 1);
    assert!(loss[0]["at"].is_i64());

    let log = live.get("/api/v1/tasks/api/log").await.json();
    assert_eq!(log["verification"]["intact"], true, "{log}");
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries[0]["round"], 0, "round 0 names the initial model");
    assert_eq!(entries[1]["participants"], summed);
    assert_eq!(entries[1]["input_weights"], entries[0]["output_weights"]);
    assert_eq!(log["head"], entries.last().unwrap()["hash"]);

    // The ledger credits exactly each round's summed devices, and the round log names the
    // same member set.
    // (The ledger first: a round's log entry is written before its ledger rows.)
    let ledger = live.get("/api/v1/tasks/api/ledger").await.json();
    let log_now = live.get("/api/v1/tasks/api/log").await.json();
    let entries_now = log_now["entries"].as_array().unwrap();
    let credited = ledger["rounds"].as_array().unwrap();
    assert!(!credited.is_empty(), "{ledger}");
    for r in credited {
        let round = r["round"].as_u64().unwrap() as usize;
        let entry = &entries_now[round];
        assert_eq!(
            r["members_hash"], entry["params"]["members_root"],
            "round {round}"
        );
        let members = r["members"].as_array().unwrap();
        assert_eq!(
            members.len() as u64,
            entry["participants"].as_u64().unwrap()
        );
        assert!(
            members
                .iter()
                .all(|m| m["account"].as_str().unwrap().starts_with("client"))
        );
        // Devices report no example count: the ledger splits the loss drop equally.
        assert!(members.iter().all(|m| m["weight"] == 1));
        assert_eq!(r["basis"], "held_out_loss");
        let total: f64 = members.iter().map(|m| m["credit"].as_f64().unwrap()).sum();
        let drop = r["improvement"].as_f64().unwrap();
        assert!((total - drop.max(0.0)).abs() < 1e-9, "{r}");
    }
    assert!(!ledger["totals"].as_array().unwrap().is_empty());

    let cps = live.get("/api/v1/tasks/api/checkpoints").await.json();
    let cps = cps["checkpoints"].as_array().unwrap();
    assert!(cps.len() >= 3);
    assert!(cps.iter().all(|c| c["present"] == true));
    assert_eq!(cps[0]["bytes"], 4 * 23, "23 parameters as f32");

    let text = request(live.http, "GET", "/metrics", None, None).await;
    assert_eq!(text.status, 200);
    assert!(
        text.text()
            .lines()
            .any(|l| l.starts_with("cohort_rounds_completed_total{task=\"api\"} ")),
        "{}",
        text.text()
    );

    // Pause: the loop ends; the task is paused in the database and on the API.
    let r = live.post("/api/v1/tasks/api/pause", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "paused");
    assert!(!live.coordinator.scheduler.is_running("api"));
    assert!(live.coordinator.scheduler.live("api").is_none());
    let paused = live.get("/api/v1/tasks/api").await.json();
    assert_eq!(paused["state"], "paused");
    assert!(paused["live"].is_null());
    let head = live.get("/api/v1/tasks/api/log").await.json()["head"].clone();
    let attempts = live.get("/api/v1/tasks/api/rounds").await.json();
    assert!(
        attempts["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["state"] != "running"),
        "a paused task has no running attempt: {attempts}"
    );
    // Nonsense on a paused task is refused.
    assert_eq!(live.post("/api/v1/tasks/api/pause", "").await.status, 409);
    assert_eq!(live.post("/api/v1/tasks/api/start", "").await.status, 409);

    // Resume: rounds continue from the log's head.
    let r = live.post("/api/v1/tasks/api/resume", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let done = paused["rounds_done"].as_u64().unwrap();
    // Events of rounds finished before the pause may still be queued.
    let next = loop {
        let r = next_round(&mut events).await;
        if r > done {
            break r;
        }
    };
    assert_eq!(next, done + 1, "the next round after the log's head");
    let log = live.get("/api/v1/tasks/api/log").await.json();
    assert_eq!(log["verification"]["intact"], true);
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries[done as usize]["hash"], head);
    assert_eq!(entries[done as usize + 1]["prev"], head);

    // Stop: for good.
    let r = live.post("/api/v1/tasks/api/stop", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!live.coordinator.scheduler.is_running("api"));
    for action in ["start", "resume", "pause", "stop"] {
        let r = live.post(&format!("/api/v1/tasks/api/{action}"), "").await;
        assert_eq!(r.status, 409, "{action} on a stopped task");
        assert_eq!(r.error_code(), "bad_transition");
    }
    assert_eq!(
        live.coordinator.store.task("api").unwrap().unwrap().state,
        TaskState::Stopped
    );

    // Every write is in the audit table, with its outcome.
    let audit = live.get("/api/v1/audit").await.json();
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ok = |a: &str| (a.to_string(), "ok".to_string());
    assert_eq!(
        &actions[..3],
        &[ok("task.create"), ok("task.start"), ok("task.pause")]
    );
    assert!(actions.contains(&("task.start".into(), "refused: bad_transition".into())));
    assert!(actions.contains(&ok("task.stop")));
}

/// Requests without a token, with an unknown one, with a viewer's token on a write, with
/// malformed TOML or JSON, for unknown tasks or routes, and transitions that make no sense:
/// each gets its status and a JSON error, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_change_nothing() {
    let live = Live::start().await;
    let viewer = tokens::mint(&live.coordinator.store, "dashboard", ApiRole::Viewer, 0).unwrap();
    assert_eq!(
        live.post("/api/v1/tasks", &task_toml("t", 5)).await.status,
        201
    );
    let snapshot = || {
        (
            live.coordinator.store.tasks().unwrap(),
            live.coordinator.store.rounds("t").unwrap(),
        )
    };
    let before = snapshot();

    let toml = task_toml("other", 5);
    // (method, path, token, body, status, error code)
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/api/v1/tasks",
            None,
            toml.clone(),
            401,
            "unauthenticated",
        ),
        (
            "GET",
            "/api/v1/tasks",
            None,
            String::new(),
            401,
            "unauthenticated",
        ),
        (
            "POST",
            "/api/v1/tasks",
            Some("cohort_nope"),
            toml.clone(),
            401,
            "invalid_token",
        ),
        (
            "POST",
            "/api/v1/tasks",
            Some(&viewer),
            toml.clone(),
            403,
            "forbidden",
        ),
        (
            "POST",
            "/api/v1/tasks/t/start",
            Some(&viewer),
            String::new(),
            403,
            "forbidden",
        ),
        (
            "POST",
            "/api/v1/tasks",
            Some(&live.token),
            "id = [".into(),
            400,
            "bad_toml",
        ),
        (
            "POST",
            "/api/v1/tasks",
            Some(&live.token),
            toml.replace("rounds = 5", "rounds = 5\ncolour = 1"),
            400,
            "bad_toml",
        ),
        (
            "POST",
            "/api/v1/tasks",
            Some(&live.token),
            task_toml("t", 5),
            409,
            "task_exists",
        ),
        (
            "POST",
            "/api/v1/invites",
            Some(&live.token),
            "{\"hours\": ".into(),
            400,
            "bad_json",
        ),
        (
            "POST",
            "/api/v1/invites",
            Some(&live.token),
            "{\"days\": 3}".into(),
            400,
            "bad_json",
        ),
        (
            "GET",
            "/api/v1/tasks/nope",
            Some(&live.token),
            String::new(),
            404,
            "unknown_task",
        ),
        (
            "POST",
            "/api/v1/tasks/nope/start",
            Some(&live.token),
            String::new(),
            404,
            "unknown_task",
        ),
        (
            "GET",
            "/api/v1/tasks/nope/log",
            Some(&live.token),
            String::new(),
            404,
            "unknown_task",
        ),
        (
            "GET",
            "/api/v1/nothing",
            Some(&live.token),
            String::new(),
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/api/v1/tasks",
            Some(&live.token),
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/api/v1/tasks/t/pause",
            Some(&live.token),
            String::new(),
            409,
            "bad_transition",
        ),
        (
            "POST",
            "/api/v1/tasks/t/resume",
            Some(&live.token),
            String::new(),
            409,
            "bad_transition",
        ),
        (
            "GET",
            "/api/v1/audit?limit=many",
            Some(&live.token),
            String::new(),
            400,
            "bad_query",
        ),
    ];
    for (method, path, token, body, status, code) in &cases {
        let r = request(live.http, method, path, *token, Some(body)).await;
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        assert_eq!(&r.error_code(), code, "{method} {path}");
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json"),
            "{method} {path}"
        );
    }
    // A refused TOML names the key at fault.
    let r = live
        .post(
            "/api/v1/tasks",
            &toml.replace("clients_per_round = 4", "clients_per_round = 0"),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["key"], "selection.clients_per_round");

    assert_eq!(snapshot(), before, "refused requests change nothing");
    assert!(!live.coordinator.scheduler.is_running("t"));

    // The owner's refused writes are on record; unauthenticated ones name no one.
    let audit = live.get("/api/v1/audit").await.json();
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["action"] == "task.pause"
        && e["outcome"] == "refused: bad_transition"
        && e["actor"] == "owner"));
    assert!(entries.iter().any(|e| e["actor"] == "dashboard"
        && e["action"] == "POST /api/v1/tasks"
        && e["outcome"] == "refused: forbidden"));
    // A viewer may read.
    let r = request(live.http, "GET", "/api/v1/tasks", Some(&viewer), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tasks"][0]["id"], "t");

    // An invite: the code is shown once; the list shows its status, never the code.
    let r = live.post("/api/v1/invites", "{\"hours\": 2}").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let code = r.json()["code"].as_str().unwrap().to_string();
    let list = live.get("/api/v1/invites").await;
    assert_eq!(list.json()["invites"][0]["status"], "open");
    assert!(!list.text().contains(&code));
}

/// `serve` writes the first owner token once, readable by its owner only; a restart keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_token_file_is_written_once_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let first = Live::start_in(dir.path().to_path_buf()).await;
    assert_eq!(
        first.coordinator.new_owner_token.as_deref(),
        Some(first.token.as_str())
    );
    let path = dir.path().join("coordinator/owner-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let token = first.token.clone();
    drop(first);
    let second = Live::start_in(dir.path().to_path_buf()).await;
    assert!(second.coordinator.new_owner_token.is_none());
    assert_eq!(second.token, token);
    assert_eq!(second.get("/api/v1/tasks").await.status, 200);
}

/// `owner token revoke`: a revoked token is refused with 401 (a running server within the
/// token cache's second), by name or by the id `owner token list` shows; other tokens keep
/// working; a revoked owner token in the token file is not registered again at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_are_refused_and_stay_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let live = Live::start_in(dir.path().to_path_buf()).await;
    let store = live.coordinator.store.clone();
    let viewer = tokens::mint(&store, "dashboard", ApiRole::Viewer, 1).unwrap();
    let get = |token: String| async move {
        request(live.http, "GET", "/api/v1/tasks", Some(&token), None)
            .await
            .status
    };
    assert_eq!(get(viewer.clone()).await, 200);
    let listed = tokens::list(&store).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|t| t.revoked_at.is_none()));
    assert_eq!(tokens::revoke(&store, "no-such-token", 2).unwrap(), 0);
    assert_eq!(tokens::revoke(&store, "dashboard", 2).unwrap(), 1);
    // Refused once the server's cached lookup (at most a second old) expires.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while get(viewer.clone()).await != 401 {
        assert!(std::time::Instant::now() < deadline, "still accepted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = request(live.http, "GET", "/api/v1/tasks", Some(&viewer), None).await;
    assert_eq!(r.json()["error"]["code"], "invalid_token");
    assert_eq!(
        get(live.token.clone()).await,
        200,
        "the owner token still works"
    );
    // The owner token, by its id; it stays revoked across a restart that reads its file.
    let owner = tokens::list(&store)
        .unwrap()
        .into_iter()
        .find(|t| t.name == "owner")
        .unwrap();
    assert_eq!(tokens::revoke(&store, &owner.id, 3).unwrap(), 1);
    assert_eq!(
        tokens::revoke(&store, &owner.id, 4).unwrap(),
        0,
        "already revoked"
    );
    let token = live.token.clone();
    drop(live);
    let again = Live::start_in(dir.path().to_path_buf()).await;
    assert_eq!(again.token, token);
    assert_eq!(again.get("/api/v1/tasks").await.status, 401);
    let listed = tokens::list(&again.coordinator.store).unwrap();
    assert!(listed.iter().all(|t| t.revoked_at.is_some()), "{listed:?}");
}

/// The event stream carries the owners' changes and the rounds as they complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_task_changes_and_rounds() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut live = Live::start().await;
    live.devices(4).await;
    let mut s = tokio::net::TcpStream::connect(live.http).await.unwrap();
    s.write_all(
        format!(
            "GET /api/v1/events?token={} HTTP/1.1\r\nHost: x\r\n\r\n",
            live.token
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut lines = BufReader::new(s).lines();
    let status = lines.next_line().await.unwrap().unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(
        live.post("/api/v1/tasks", &task_toml("sse", 1000))
            .await
            .status,
        201
    );
    assert_eq!(live.post("/api/v1/tasks/sse/start", "").await.status, 200);
    let mut seen = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        let kind = v["type"].as_str().unwrap().to_string();
        if kind == "round_completed" {
            assert_eq!(v["task"], "sse");
            assert_eq!(v["round"], 1);
            assert!((3..=4).contains(&v["contributors"].as_u64().unwrap()));
            seen.push(kind);
            break;
        }
        if kind == "task_changed" {
            seen.push(format!(
                "{}:{}",
                v["task"].as_str().unwrap(),
                v["state"].as_str().unwrap()
            ));
        }
    }
    assert_eq!(seen, ["sse:created", "sse:running", "round_completed"]);
}

/// A task with differential privacy: `/privacy` serves the plan before any round (nothing
/// spent, the accountant's curve up to the rounds the budget affords) and, once the budget has
/// ended the task, the ε of each round as its round-log entry records it; `task show` prints
/// the same figures. A task without DP answers `enabled: false`; an unknown task is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_privacy_budget_is_served_as_rounds_spend_it() {
    use cohort_coordinator::scheduler::TaskEvent;
    let mut live = Live::start().await;
    let mut events = live.coordinator.scheduler.subscribe();
    live.devices(4).await;
    let dp = task_toml("dp", 5).replace("max_weight = 16", "max_weight = 1")
        + "\n[privacy]\nmode = \"central\"\nnoise_multiplier = 2.0\nrounds = 2\n\
           delta = 1e-3\n[privacy.clip]\nnorm = 1.0\n";
    assert_eq!(live.post("/api/v1/tasks", &dp).await.status, 201);
    assert_eq!(
        live.post("/api/v1/tasks", &task_toml("plain", 5))
            .await
            .status,
        201
    );

    let before = live.get("/api/v1/tasks/dp/privacy").await;
    assert_eq!(before.status, 200, "{}", before.text());
    let before = before.json();
    assert_eq!(before["enabled"], true);
    assert_eq!(before["mode"], "central");
    assert_eq!(before["noise_added_by"], "coordinator");
    assert_eq!(before["max_rounds"], 2);
    assert_eq!(before["rounds_published"], 0);
    assert_eq!(before["rounds_left"], 2);
    assert_eq!(before["epsilon_spent"], 0.0);
    assert_eq!(before["sampling"]["kind"], "none");
    assert_eq!(before["spent"].as_array().unwrap().len(), 0);
    let planned: Vec<(u64, f64)> = before["planned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["round"].as_u64().unwrap(), p["epsilon"].as_f64().unwrap()))
        .collect();
    assert_eq!(planned.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
    assert!(
        planned[0].1 > 0.0 && planned[0].1 < planned[1].1,
        "{planned:?}"
    );
    assert!(planned[1].1 <= before["epsilon_budget"].as_f64().unwrap());

    let plain = live.get("/api/v1/tasks/plain/privacy").await.json();
    assert_eq!(plain["enabled"], false);
    assert_eq!(plain["mode"], "none");
    let unknown = live.get("/api/v1/tasks/nope/privacy").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error_code(), "unknown_task");

    assert_eq!(live.post("/api/v1/tasks/dp/start", "").await.status, 200);
    let exhausted = loop {
        match events.recv().await {
            Ok(TaskEvent::TaskFinished {
                privacy_budget_exhausted,
                ..
            }) => break privacy_budget_exhausted,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => panic!("the scheduler stopped: {e}"),
        }
    };
    let after = live.get("/api/v1/tasks/dp/privacy").await.json();
    assert_eq!(after["rounds_published"], 2, "{after}");
    assert_eq!(after["rounds_left"], 0);
    let spent: Vec<(u64, f64)> = after["spent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["round"].as_u64().unwrap(), p["epsilon"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        spent, planned,
        "each round spent what the accountant planned"
    );
    assert_eq!(after["epsilon_spent"].as_f64(), exhausted);
    // The ε figures are the round log's: the same numbers in each entry's params.
    let log = live.get("/api/v1/tasks/dp/log").await.json();
    let logged: Vec<f64> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["params"]["epsilon_spent"].as_f64())
        .collect();
    assert_eq!(logged, [planned[0].1, planned[1].1]);
    let show = live.get("/api/v1/tasks/dp").await.json();
    assert_eq!(show["state"], "privacy budget exhausted");

    // `task show` reads the same budget from the same state directory.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cohort-coordinator"))
        .arg("--state")
        .arg(live.root.join("coordinator"))
        .args(["task", "show", "dp"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("privacy: central DP: epsilon"), "{text}");
    assert!(
        text.contains(&format!(
            "privacy: epsilon {:.4} spent after 2 rounds, 0 rounds left",
            planned[1].1
        )),
        "{text}"
    );
    assert!(
        text.contains("round 2\t") && text.contains(&format!("epsilon spent {:.4}", planned[1].1)),
        "{text}"
    );
}

/// Every route of the router is documented in docs/api/openapi.yaml, with each of its methods,
/// and the file documents no route the router lacks.
#[test]
fn every_route_is_in_the_openapi_file() {
    let text = include_str!("../../docs/api/openapi.yaml");
    let mut documented: Vec<(String, String)> = Vec::new();
    let mut in_paths = false;
    let mut path = None;
    for line in text.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && p.starts_with('/')
        {
            path = Some(p.to_string());
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
            && ["get", "post", "put", "delete", "patch"].contains(&m)
        {
            documented.push((path.clone().unwrap(), m.to_string()));
        }
    }
    let mut routed: Vec<(String, String)> = cohort_coordinator::http::routes()
        .into_iter()
        .flat_map(|(p, methods, _)| methods.iter().map(move |m| (p.to_string(), m.to_string())))
        .collect();
    routed.sort();
    documented.sort();
    assert_eq!(routed, documented);
    assert!(routed.len() >= 20);
}

/// The console is served from the binary: the page, its script and its stylesheet, and
/// nothing else it loads (no CDN); together at most 200 KB. `/metrics` is there too, with its
/// content type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_embedded_and_small() {
    let live = Live::start().await;
    let mut total = 0;
    for (path, kind) in [
        ("/", "text/html"),
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
    ] {
        let r = request(live.http, "GET", path, None, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        total += r.body.len();
    }
    assert_eq!(total, cohort_coordinator::http::console::FIRST_LOAD_BYTES);
    assert!(total <= 200_000, "first load is {total} bytes");
    let page = request(live.http, "GET", "/", None, None).await.text();
    for attr in ["src=\"", "href=\""] {
        for reference in page.split(attr).skip(1) {
            assert!(
                reference.starts_with('/')
                    || reference.starts_with("data:")
                    || reference.starts_with('#'),
                "the console loads {reference:.40} from elsewhere"
            );
        }
    }
    let m = request(live.http, "GET", "/metrics", None, None).await;
    assert!(m.header("content-type").unwrap().contains("openmetrics"));
    assert!(m.text().ends_with("# EOF\n"));
}
