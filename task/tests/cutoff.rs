//! The over-selection cut-off around whole SecAgg+ rounds in memory: randomized arrival orders,
//! dropouts before and after the upload, a malicious member whose input is refused, and stopped
//! members that upload anyway. The sum holds exactly the first `cutoff` accepted inputs.
//!
//! Evaluated rounds run through the same harness: every honest member inserts its federated
//! evaluation into the vector it masks, and the sums the server decodes equal the sums of the
//! contributors' clipped scalars, with dropouts at every phase.

use std::collections::{BTreeMap, BTreeSet};

use cohort_aggregation::secagg::client::ClientOptions;
use cohort_aggregation::secagg::{
    ClientRound, ClientStep, IdentityDirectory, ServerAction, ServerEvent, SigningKey, UnmaskedSum,
};
use cohort_aggregation::time::Time;
use cohort_protocol::{
    ClientIndex, ClientMessage, ContentHash, MaskedInput, PackedVector, ServerMessage,
};
use cohort_task::cutoff::{CutoffRound, is_stop};
use cohort_task::evaluation::{FederatedEvaluation, LocalEvaluation};
use cohort_task::{Attempt, RoundPlan, TaskConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The task's dropout fraction: 0.2, or 0.1 with the consistency check (whose parameters
/// need a majority of the over-selected cohort beyond the colluders to survive).
fn dropout(check: bool) -> f64 {
    if check { 0.1 } else { 0.2 }
}

/// A task with `secagg.consistency_check = check`.
fn task(cpr: u32, over: f64, check: bool) -> TaskConfig {
    let dropout = dropout(check);
    TaskConfig::from_toml(&format!(
        r#"
        id = "t"
        rounds = 1
        [model]
        input_shape = [3]
        num_classes = 2
        layers = [{{ type = "linear", out = 2 }}]
        [training]
        epochs = 1
        batch_size = 8
        learning_rate = 0.1
        [selection]
        clients_per_round = {cpr}
        over_selection = {over}
        [secagg]
        dropout_fraction = {dropout}
        consistency_check = {check}
        "#
    ))
    .unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Honest,
    /// Vanishes on its round config, before advertising keys (R0).
    DropsAtKeys,
    /// Vanishes before sending its shares (R1).
    DropsAtShares,
    /// Vanishes at the consistency check (R2.5; honest in rounds without it).
    DropsAtCheck,
    /// Vanishes before sending its masked input.
    DropsBeforeInput,
    /// Vanishes after its masked input (before R3).
    DropsBeforeUnmask,
    /// Sends a masked input of the wrong length (removed by the server).
    WrongLength,
    /// Told to stop, sends its masked input anyway.
    IgnoresStop,
}

struct Outcome {
    sum: Option<UnmaskedSum>,
    accepted_order: Vec<ClientIndex>,
    stopped: BTreeSet<ClientIndex>,
    late_refused: usize,
    inputs: BTreeMap<ClientIndex, Vec<u32>>,
    /// Evaluated rounds: what each member that provided an input evaluated (`None`: it did
    /// not evaluate).
    evaluations: BTreeMap<ClientIndex, Option<LocalEvaluation>>,
}

/// A random evaluation, sometimes missing and sometimes out of the documented bounds.
fn random_evaluation(rng: &mut ChaCha20Rng) -> Option<LocalEvaluation> {
    if rng.random_bool(0.2) {
        return None;
    }
    Some(LocalEvaluation {
        examples: rng.random_range(0..120_000),
        loss: rng.random_range(0.0..80.0),
        accuracy: rng.random_range(-0.1..1.1),
    })
}

/// Member `p`'s identity key (cohort position p, index p + 1).
fn identity(p: usize) -> SigningKey {
    SigningKey::from_bytes(&[p as u8 ^ 0x5a; 32])
}

/// Runs one round: client messages reach the server in a random order (one random pending
/// message at a time, a millisecond apart), silent dropouts cost the phase deadline (the clock
/// jumps to `poll_timeout` and the round gets `handle_timeout`). With the plan's consistency
/// check, every member has an identity key and the server and clients the directory.
fn run(plan: &RoundPlan, roles: &[Role], seed: u64) -> Outcome {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let params = plan.secagg.as_ref().unwrap();
    let model_len = params.vector_len as usize;
    let n = roles.len();
    let directory = params.consistency_check.then(|| {
        let mut d = IdentityDirectory::new();
        for p in 0..n {
            d.insert(ClientIndex(p as u32 + 1), identity(p).verifying_key());
        }
        d
    });
    let mut now = Time::ZERO;
    let (mut server, first) = CutoffRound::start_with_identities(
        now,
        plan,
        Attempt::first(1).round_id(),
        ContentHash::of(b"m"),
        [9; 32],
        directory.clone(),
    )
    .unwrap();
    let mut clients: Vec<Option<ClientRound>> = (0..n).map(|_| None).collect();
    let mut to_server: Vec<(ClientIndex, ClientMessage)> = Vec::new();
    let mut to_clients: Vec<(ClientIndex, ServerMessage)> = Vec::new();
    let mut out = Outcome {
        sum: None,
        accepted_order: Vec::new(),
        stopped: BTreeSet::new(),
        late_refused: 0,
        inputs: BTreeMap::new(),
        evaluations: BTreeMap::new(),
    };
    let mut pending = first;
    let mut gone = vec![false; n];
    loop {
        for action in pending.drain(..) {
            match action {
                ServerAction::Send { to, message } => to_clients.push((to, message)),
                ServerAction::Unmask(job) => {
                    out.sum = Some(job.run(1).expect("unmasking succeeds"));
                    return out;
                }
                ServerAction::Aborted(reason) => panic!("round aborted: {reason}"),
                ServerAction::Refused { client, .. } => {
                    if out.stopped.contains(&client) {
                        out.late_refused += 1;
                    }
                }
                ServerAction::Removed { .. } => {}
            }
        }
        // Server messages are delivered at once, in order; the clients' answers queue up.
        for (to, message) in std::mem::take(&mut to_clients) {
            let p = to.0 as usize - 1;
            let role = roles[p];
            if is_stop(&message) {
                out.stopped.insert(to);
                if role == Role::IgnoresStop && !out.inputs.contains_key(&to) {
                    let input: Vec<u32> = (0..model_len).map(|_| rng.random()).collect();
                    if let Some(c) = clients[p].as_mut()
                        && let Ok(Some(m)) = c.provide_input(input)
                    {
                        to_server.push((to, m));
                    }
                } else {
                    gone[p] = true;
                }
                continue;
            }
            if gone[p] {
                continue;
            }
            let vanishes = match &message {
                ServerMessage::RoundConfig(_) => role == Role::DropsAtKeys,
                ServerMessage::ShareKeys(_) => role == Role::DropsAtShares,
                ServerMessage::ConsistencyCheck(_) => role == Role::DropsAtCheck,
                _ => false,
            };
            if vanishes {
                gone[p] = true;
                continue;
            }
            let reply = match (message, clients[p].as_mut()) {
                (ServerMessage::RoundConfig(config), None) => {
                    let options = ClientOptions {
                        identity: directory.as_ref().map(|_| identity(p)),
                        directory: directory.clone(),
                        adversarial: 0.05,
                        dropout: dropout(directory.is_some()),
                        ..ClientOptions::default()
                    };
                    let (c, m) = ClientRound::start_with(config, [p as u8; 32], options).unwrap();
                    clients[p] = Some(c);
                    Some(m)
                }
                (m, Some(c)) => match c.handle(m) {
                    Ok(ClientStep::Send(m)) => {
                        if matches!(m, ClientMessage::Unmask(_)) && role == Role::DropsBeforeUnmask
                        {
                            gone[p] = true;
                            None
                        } else {
                            Some(m)
                        }
                    }
                    Ok(ClientStep::NeedInput) => match role {
                        Role::DropsBeforeInput => {
                            gone[p] = true;
                            None
                        }
                        _ => {
                            let len = if role == Role::WrongLength {
                                model_len + 1
                            } else {
                                model_len
                            };
                            let input: Vec<u32> = match &plan.evaluation {
                                // The update's elements, then the evaluation before the
                                // weight element, as a device encodes them.
                                Some(layout) if role != Role::WrongLength => {
                                    let base = len - layout.len();
                                    let mut v: Vec<u32> = (0..base).map(|_| rng.random()).collect();
                                    let evaluation = random_evaluation(&mut rng);
                                    layout.insert(&mut v, evaluation.as_ref());
                                    out.evaluations.insert(to, evaluation);
                                    v
                                }
                                _ => (0..len).map(|_| rng.random()).collect(),
                            };
                            if role != Role::WrongLength {
                                out.inputs.insert(to, input.clone());
                            }
                            match c.provide_input(input) {
                                Ok(m) => m,
                                // The client refuses a wrong length: forge the message.
                                Err(_) => Some(ClientMessage::MaskedInput(MaskedInput {
                                    round_id: Attempt::first(1).round_id(),
                                    vector: PackedVector::pack(&vec![7; len], plan.ring_bits())
                                        .unwrap(),
                                })),
                            }
                        }
                    },
                    Ok(ClientStep::Finished(_)) | Err(_) => None,
                },
                (_, None) => None,
            };
            if let Some(m) = reply {
                to_server.push((to, m));
            }
        }
        if to_server.is_empty() {
            // Nothing in flight: the phase's deadline passes.
            now = server
                .poll_timeout()
                .expect("a round in progress has a deadline");
            pending = server.handle_timeout(now);
            continue;
        }
        let k = rng.random_range(0..to_server.len());
        let (from, message) = to_server.swap_remove(k);
        let is_input = matches!(message, ClientMessage::MaskedInput(_));
        now = now + std::time::Duration::from_millis(1);
        pending = server.handle(now, ServerEvent::Message { from, message });
        if is_input && server.members(3).contains(&from) && !out.accepted_order.contains(&from) {
            out.accepted_order.push(from);
        }
    }
}

/// Σ inputs of `who` read in the round's ring of `r` bits (widened, as the unmasked sum is).
fn expected(inputs: &BTreeMap<ClientIndex, Vec<u32>>, who: &[ClientIndex], r: u8) -> Vec<u32> {
    let len = inputs.values().next().unwrap().len();
    let mut sum = vec![0u32; len];
    for c in who {
        for (s, x) in sum.iter_mut().zip(&inputs[c]) {
            *s = s.wrapping_add(*x);
        }
    }
    cohort_aggregation::ring::widen(&mut sum, r);
    sum
}

/// 10 targeted, 13 selected: the first 10 accepted inputs make the sum, the other 3 members are
/// told to stop, and a stopped member's late input is refused; with and without the
/// consistency check (the server then checks the members' signatures against the directory).
#[test]
fn sums_exactly_the_first_cutoff_inputs_and_stops_the_rest() {
    for check in [true, false] {
        sums_the_first_cutoff_inputs(check);
    }
}

fn sums_the_first_cutoff_inputs(check: bool) {
    let t = task(10, 0.3, check);
    let plan = RoundPlan::new(&t, t.selection.selection_size(), 3).unwrap();
    assert_eq!((plan.selected, plan.cutoff), (13, 10));
    assert_eq!(plan.secagg.as_ref().unwrap().consistency_check, check);
    let roles = vec![Role::IgnoresStop; 13];
    let out = run(&plan, &roles, 1);
    let sum = out.sum.expect("the round completes");
    assert_eq!(out.accepted_order.len(), 10);
    let mut first: Vec<ClientIndex> = out.accepted_order.clone();
    first.sort_unstable();
    assert_eq!(sum.contributors, first);
    assert_eq!(
        sum.sum,
        expected(&out.inputs, &sum.contributors, plan.ring_bits())
    );
    assert_eq!(out.stopped.len(), 3);
    assert!(out.stopped.iter().all(|s| !sum.contributors.contains(s)));
    assert_eq!(sum.dropped.len(), 3);
    assert!(
        out.late_refused >= 1,
        "a stopped member's input must be refused"
    );
}

/// Random cohorts with random roles: whatever the arrival order, dropouts and a malicious
/// member, the sum is exactly the accepted inputs, never more than the cut-off, and the
/// stopped members are never in it. Without the consistency check: with it, the heavy
/// over-selection drawn here (up to 100%) counts as a dropout fraction that leaves no
/// semi-malicious parameters; the check with over-selection is covered above.
#[test]
fn randomized_arrivals_dropouts_and_a_malicious_member() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    for case in 0..40u64 {
        let cpr = rng.random_range(3..=24);
        let over = [0.0, 0.25, 0.5, 1.0][rng.random_range(0..4)];
        let t = task(cpr, over, false);
        let n = t.selection.selection_size();
        let plan = RoundPlan::new(&t, n, 3).unwrap();
        // Up to n − q_min members misbehave or vanish, so that the round can still complete.
        let spare = (n - plan.quorum) as usize;
        let mut roles = vec![Role::Honest; n as usize];
        let mut order: Vec<usize> = (0..n as usize).collect();
        order.shuffle(&mut rng);
        let bad = rng.random_range(0..=spare.min(3));
        for (i, &p) in order.iter().take(bad).enumerate() {
            roles[p] = [
                Role::DropsBeforeInput,
                Role::WrongLength,
                Role::DropsBeforeUnmask,
            ][i % 3];
        }
        for &p in order.iter().skip(bad) {
            if rng.random_bool(0.3) {
                roles[p] = Role::IgnoresStop;
            }
        }
        let out = run(&plan, &roles, case);
        let sum = out
            .sum
            .unwrap_or_else(|| panic!("case {case}: n {n}, cut-off {}", plan.cutoff));
        assert!(
            sum.contributors.len() <= plan.cutoff as usize,
            "case {case}: {} inputs summed, cut-off {}",
            sum.contributors.len(),
            plan.cutoff
        );
        assert!(
            sum.contributors.len() >= plan.quorum as usize,
            "case {case}"
        );
        assert_eq!(
            sum.sum,
            expected(&out.inputs, &sum.contributors, plan.ring_bits()),
            "case {case}"
        );
        for c in &sum.contributors {
            assert_ne!(roles[c.0 as usize - 1], Role::WrongLength, "case {case}");
            assert!(
                !out.stopped.contains(c),
                "case {case}: stopped {c} is in the sum"
            );
        }
        if plan.over_selected() && out.accepted_order.len() == plan.cutoff as usize {
            assert_eq!(
                out.stopped.len() + out.accepted_order.len(),
                n as usize,
                "case {case}: every member not accepted is stopped"
            );
        } else {
            assert!(
                out.stopped.is_empty(),
                "case {case}: no cut-off without over-selection"
            );
        }
    }
}

/// Evaluated rounds, with and without the consistency check and over-selection: members vanish
/// at every phase (R0, R1, R2, R2.5, R3), one sends a wrong length, others ignore their stop,
/// and each honest member inserts a random evaluation (sometimes none, sometimes beyond the
/// documented bounds). The unmasked sum is exact, and the federated evaluation decoded from it
/// is that of the sums of the contributors' clipped scalars: nobody else's, nothing lost.
#[test]
fn federated_evaluation_sums_are_exact_with_dropouts_at_every_phase() {
    let mut rng = ChaCha20Rng::seed_from_u64(29);
    let phases = [
        Role::DropsAtKeys,
        Role::DropsAtShares,
        Role::DropsBeforeInput,
        Role::DropsAtCheck,
        Role::DropsBeforeUnmask,
        Role::WrongLength,
    ];
    let mut ran = [0; 2];
    for case in 0..40u64 {
        let check = case % 2 == 0;
        let cpr = rng.random_range(6..=24);
        let over = if check {
            0.0
        } else {
            [0.0, 0.25, 0.5][rng.random_range(0..3)]
        };
        let t = task(cpr, over, check);
        let n = t.selection.selection_size();
        // Small cohorts have no semi-malicious parameters for the check: skipped.
        let Ok(plan) = RoundPlan::new(&t, n, 3) else {
            continue;
        };
        let plan = plan.with_federated_evaluation().unwrap();
        let layout = plan.evaluation.clone().unwrap();
        let params = plan.secagg.as_ref().unwrap();
        assert_eq!(params.vector_len as usize, 3 + 1 + layout.len());
        let spare = (n - plan.quorum) as usize;
        let mut roles = vec![Role::Honest; n as usize];
        let mut order: Vec<usize> = (0..n as usize).collect();
        order.shuffle(&mut rng);
        let bad = spare.min(phases.len());
        let offset = rng.random_range(0..phases.len());
        for (i, &p) in order.iter().take(bad).enumerate() {
            roles[p] = phases[(offset + i) % phases.len()];
        }
        for &p in order.iter().skip(bad) {
            if plan.over_selected() && rng.random_bool(0.3) {
                roles[p] = Role::IgnoresStop;
            }
        }
        let out = run(&plan, &roles, 100 + case);
        let mut sum = out
            .sum
            .unwrap_or_else(|| panic!("case {case}: n {n}, cut-off {}", plan.cutoff));
        assert_eq!(
            sum.sum,
            expected(&out.inputs, &sum.contributors, plan.ring_bits()),
            "case {case}"
        );
        let mut truth = [0u64; 4];
        for c in &sum.contributors {
            let scalars = out.evaluations[c]
                .and_then(|e| e.scalars())
                .unwrap_or([0; 4]);
            for (t, s) in truth.iter_mut().zip(scalars) {
                *t += s;
            }
        }
        let base_len = sum.sum.len() - layout.len();
        let decoded = layout.take_from(&mut sum).expect("honest sums decode");
        assert_eq!(
            decoded,
            FederatedEvaluation::from_sums(truth),
            "case {case}: {truth:?}"
        );
        assert_eq!(sum.sum.len(), base_len, "the evaluation limbs are removed");
        ran[usize::from(check)] += 1;
    }
    assert!(
        ran.iter().all(|&r| r >= 5),
        "rounds run (without, with the check): {ran:?}"
    );
}
