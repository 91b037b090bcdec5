//! A device's credit from the contributor ledger, over QUIC on loopback: five devices train a
//! four-round task (four a round); then each device's [`EdgeClient::credit`] matches the
//! coordinator's ledger rows for its account and verifies against the round log the device
//! checked while training (caught up to its last round). A coordinator whose ledger says
//! something its signed log does not back is refused with an error naming the round: a weight
//! changed, a round whose ledger lost another member, and (when the run gives one: the
//! selection may leave a device out of every round) a round the device was not in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_coordinator::ledger;
use cohort_coordinator::states::TaskState;
use cohort_edge::credit::CreditError;
use cohort_edge::run::{RunConfig, RunError};
use cohort_edge::{EdgeClient, EdgeError, FileSecretStore, Host, LinuxDevice, TaskCredit};
use cohort_loopback::process::four_device_task_toml;
use cohort_loopback::{BlockingCoordinator, SyntheticTrainer};
use cohort_protocol::TaskId;

const DEVICES: usize = 5;
const ROUNDS: u32 = 4;

/// The library client of loopback device `i` (its state and password as `spawn_client` made
/// them), for asking its credit.
fn device(h: &BlockingCoordinator, i: usize) -> EdgeClient {
    let dir = h.tmp.path().join(format!("client-{i:03}"));
    let config = RunConfig::new(
        h.coordinator.addr,
        dir.clone(),
        format!("demo-password-{i}"),
    );
    let host = Host {
        device: Arc::new(LinuxDevice::default()),
        secrets: Arc::new(FileSecretStore::new(&dir)),
        secrets_place: dir.display().to_string(),
        listener: None,
    };
    EdgeClient::new(config, host, Box::new(SyntheticTrainer::new(0, 1))).unwrap()
}

fn wait_until_finished(h: &BlockingCoordinator, task: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let row = h.coordinator.store.task(task).unwrap().unwrap();
        // The ledger rows of the last round are written after its log entry; the task is
        // marked finished after them.
        if row.state == TaskState::Finished {
            return;
        }
        assert!(Instant::now() < deadline, "the task did not finish in time");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn account(i: usize) -> String {
    format!("client{i:03}")
}

/// The coordinator's rows of `account` in `task`: (round, weight, credit).
fn coordinator_rows(h: &BlockingCoordinator, task: &str, account: &str) -> Vec<(u64, u64, f64)> {
    ledger::rounds(&h.coordinator.store, task)
        .unwrap()
        .into_iter()
        .filter_map(|r| {
            let m = r.members.iter().find(|c| c.account == account)?;
            Some((r.round, m.weight, m.credit))
        })
        .collect()
}

fn credit_of(h: &BlockingCoordinator, i: usize, task: &TaskId) -> Result<TaskCredit, EdgeError> {
    device(h, i).credit(task)
}

#[test]
fn each_device_credit_matches_the_ledger_and_is_refused_when_the_log_does_not_back_it() {
    let h = BlockingCoordinator::start(&four_device_task_toml("credit", ROUNDS), DEVICES).unwrap();
    let task = TaskId("credit".into());
    wait_until_finished(&h, "credit");
    assert_eq!(
        ledger::rounds(&h.coordinator.store, "credit")
            .unwrap()
            .len(),
        ROUNDS as usize,
        "every round credited"
    );

    let mut verified = 0;
    let mut credits = Vec::new();
    for i in 0..DEVICES {
        let expected = coordinator_rows(&h, "credit", &account(i));
        let c = match credit_of(&h, i, &task) {
            Ok(c) => c,
            // Never selected, so no log verified and no credit.
            Err(EdgeError::Run(RunError::Credit(CreditError::NothingVerified { .. })))
                if expected.is_empty() =>
            {
                credits.push(None);
                continue;
            }
            Err(e) => panic!("device {i}: {e}"),
        };
        assert_eq!(c.account, account(i));
        // Every row is checked: the device first catches its head up to the rounds it is
        // credited in (its last round's entry came after its last check-in).
        let checked: Vec<(u64, u64, f64)> = c
            .rows
            .iter()
            .map(|r| (r.attempt.round, r.weight, r.credit))
            .collect();
        assert_eq!(checked, expected, "device {i}");
        assert_eq!(c.newer_unverified, 0, "device {i}");
        if let Some(last) = expected.last() {
            assert!(c.verified_up_to >= last.0, "device {i}");
        }
        assert!(c.rows.iter().all(|r| r.proven), "device {i}");
        assert!((c.total() - expected.iter().map(|r| r.2).sum::<f64>()).abs() < 1e-12);
        verified += c.rows.len();
        credits.push(Some(c));
    }
    assert!(
        verified >= ROUNDS as usize * 4,
        "every member of every round was checked"
    );

    // A device with a checked row; the coordinator's ledger changes its weight in that round.
    let (i, c) = credits
        .iter()
        .enumerate()
        .find_map(|(i, c)| c.as_ref().filter(|c| !c.rows.is_empty()).map(|c| (i, c)))
        .unwrap();
    let round = c.rows[0].attempt.round;
    let set_weight = |w: u64| {
        h.coordinator
            .store
            .with_conn(|conn| {
                conn.execute(
                    "UPDATE ledger SET weight = ?1 WHERE task = 'credit' AND round = ?2 AND account = ?3",
                    rusqlite::params![w as i64, round as i64, account(i)],
                )?;
                Ok(())
            })
            .unwrap()
    };
    set_weight(c.rows[0].weight + 1_000);
    let err = credit_of(&h, i, &task).unwrap_err();
    assert!(
        matches!(&err, EdgeError::Run(RunError::Credit(CreditError::NotCounted { attempt, .. })) if attempt.round == round),
        "{err}"
    );
    assert!(err.to_string().contains("misbehaving"), "{err}");
    set_weight(c.rows[0].weight);
    assert_eq!(credit_of(&h, i, &task).unwrap().rows, c.rows);

    // A round a device was not in, within its verified log: the ledger credits it anyway
    // (its member tree then differs from the one the entry names).
    let all = ledger::rounds(&h.coordinator.store, "credit").unwrap();
    let outsider = credits.iter().enumerate().find_map(|(j, c)| {
        let c = c.as_ref()?;
        all.iter()
            .find(|r| {
                r.round <= c.verified_up_to && !r.members.iter().any(|m| m.account == account(j))
            })
            .map(|r| (j, r.round))
    });
    if let Some((j, round)) = outsider {
        h.coordinator
            .store
            .with_conn(|conn| {
                conn.execute(
                    "INSERT INTO ledger (task, round, account, weight, credit, basis, improvement)
                     VALUES ('credit', ?1, ?2, 100, 0.5, 'fixed_reward', 1.0)",
                    rusqlite::params![round as i64, account(j)],
                )?;
                Ok(())
            })
            .unwrap();
        let err = credit_of(&h, j, &task).unwrap_err();
        assert!(
            matches!(&err, EdgeError::Run(RunError::Credit(CreditError::NotCounted { attempt, .. })) if attempt.round == round),
            "{err}"
        );
    } else {
        eprintln!(
            "every device was in every round it verified; the outsider case is covered by credit::tests"
        );
    }

    // A round whose ledger lost another member: the member tree rebuilt from the ledger no
    // longer has the entry's size (or root), so the device's row in it is refused.
    h.coordinator
        .store
        .with_conn(|conn| {
            conn.execute(
                "DELETE FROM ledger WHERE task = 'credit' AND round = ?1 AND account =
                 (SELECT account FROM ledger WHERE task = 'credit' AND round = ?1
                  AND account != ?2 LIMIT 1)",
                rusqlite::params![round as i64, account(i)],
            )?;
            Ok(())
        })
        .unwrap();
    let err = credit_of(&h, i, &task).unwrap_err();
    assert!(
        matches!(&err, EdgeError::Run(RunError::Credit(CreditError::NotCounted { attempt, .. })) if attempt.round == round),
        "{err}"
    );

    // A task this device never verified: nothing to check against.
    let err = credit_of(&h, 0, &TaskId("other".into())).unwrap_err();
    assert!(
        matches!(
            err,
            EdgeError::Run(RunError::Credit(CreditError::NothingVerified { .. }))
        ),
        "{err}"
    );
}
