//! Issue 10 item 8: a coordinator that deviates from the protocol. Each attack ends with the
//! attacked clients refusing, and the server holding no individual input: checked by
//! subtraction (`harness::knowledge`: everything the server received, minus every mask it can
//! rebuild from it, compared with the true input), not statistically. The honest path stays
//! exact with dropouts at every phase, R2.5 included, and every abort reaches the live clients
//! as `RoundResult::Aborted`.

mod harness;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use cohort_aggregation::secagg::AbortReason;
use cohort_aggregation::secagg::kdf;
use cohort_protocol::{
    ClientIndex, ClientMessage, ConsistencyCheckRequest, KeyCommitment, PeerKeys, RoundResult,
    ServerMessage,
};
use harness::knowledge::Knowledge;
use harness::{
    DropPoint, Harness, Outcome, active_params, directory_of, expected_sum, identities, params_for,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_bytes::ByteBuf;

/// No client's input can be rebuilt by subtraction from what the server saw.
fn assert_nothing_exposed(out: &Outcome, colluders: &[ClientIndex]) {
    let exposed = Knowledge::gather(out, colluders).exposed(out);
    assert!(
        exposed.is_empty(),
        "the server can rebuild the inputs of {exposed:?}"
    );
}

fn sent(out: &Outcome, who: ClientIndex, kind: &str) -> bool {
    out.to_server
        .iter()
        .any(|(from, m)| *from == who && m.kind() == kind)
}

fn error_of(out: &Outcome, who: ClientIndex) -> &str {
    out.client_errors
        .get(&who)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{who} did not refuse; errors: {:?}", out.client_errors))
}

/// An active round where the server does not check signatures itself (a dishonest server
/// relays whatever suits it; only the clients' checks stand in its way).
fn active_without_server_checks(n: u32, len: u32, seed: u64) -> Harness {
    let params = active_params(n, len);
    let keys = identities(n, seed);
    let directory = directory_of(&keys);
    let mut h = Harness::new(params, seed);
    for (i, key) in keys.into_iter().enumerate() {
        h.options[i].identity = Some(key);
        h.options[i].directory = Some(directory.clone());
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Honest path
// ---------------------------------------------------------------------------------------------

#[test]
fn active_rounds_are_exact_with_dropouts_at_every_phase() {
    let points = [
        DropPoint::BeforeAdvertise,
        DropPoint::BeforeShareKeys,
        DropPoint::BeforeMaskedInput,
        DropPoint::BeforeConsistency,
        DropPoint::BeforeUnmask,
    ];
    let n = 40;
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for case in 0..5u64 {
        let mut h = Harness::new_active(active_params(n, 32), case);
        let q = h.server.params().min_survivors;
        let spare = (n - q) as usize;
        let mut order: Vec<u32> = (1..=n).collect();
        order.shuffle(&mut rng);
        for (i, u) in order.iter().take(spare).enumerate() {
            h.drops
                .insert(ClientIndex(*u), points[(i + case as usize) % points.len()]);
        }
        let drops = h.drops.clone();
        let out = h.run();
        let sum = out
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("case {case}: {e}; drops {drops:?}"));
        assert_eq!(sum.sum, expected_sum(&out.inputs, &sum.contributors));
        for (u, p) in &drops {
            let inside = matches!(p, DropPoint::BeforeConsistency | DropPoint::BeforeUnmask);
            assert_eq!(
                sum.contributors.contains(u),
                inside,
                "case {case}: {u} {p:?}"
            );
        }
        assert!(out.client_errors.is_empty(), "{:?}", out.client_errors);
        // R0 keys were signed and R3 requests carried t signatures.
        let t = out.server.params().threshold as usize;
        for (_, m) in &out.to_clients {
            if let ServerMessage::Unmask(r) = m {
                assert!(r.signatures.len() >= t);
            }
            if let ServerMessage::ShareKeys(r) = m {
                assert!(r.peers.iter().all(|p| p.signature.is_some()));
            }
        }
        assert_nothing_exposed(&out, &[]);
    }
}

// ---------------------------------------------------------------------------------------------
// Key substitution
// ---------------------------------------------------------------------------------------------

/// The server swaps the victim's neighbours' keys for its own and rewrites their roster
/// commitments to match. On the complete graph the roster does not move anyone, so only the
/// signature check stands between the server and every share of the victim: it holds.
#[test]
fn key_substitution_is_refused_by_the_signature_check() {
    let n = 6;
    let mut params = active_params(n, 16);
    // The complete graph with t above ⌈(n + 2)/2⌉ (the semi-malicious floor).
    params.neighbours = n - 1;
    params.threshold = 5;
    params.min_survivors = 5;
    let keys = identities(n, 1);
    let directory = directory_of(&keys);
    let mut h = Harness::new(params, 1);
    for (i, key) in keys.into_iter().enumerate() {
        h.options[i].identity = Some(key);
        h.options[i].directory = Some(directory.clone());
    }
    let victim = ClientIndex(1);
    h.server_tamper = Some(Box::new(move |to, m| match m {
        ServerMessage::ShareKeys(mut r) if to == victim => {
            for p in r.peers.iter_mut().filter(|p| p.index != victim) {
                let c = [p.index.0 as u8 + 100; 32];
                let s = [p.index.0 as u8 + 150; 32];
                p.c_pk = ByteBuf::from(c.to_vec());
                p.s_pk = ByteBuf::from(s.to_vec());
                let entry = r.roster.iter_mut().find(|e| e.index == p.index).unwrap();
                entry.digest = ByteBuf::from(kdf::key_commitment(&c, &s).to_vec());
            }
            ServerMessage::ShareKeys(r)
        }
        m => m,
    }));
    let out = h.run();
    assert!(
        error_of(&out, victim).contains("signature"),
        "{:?}",
        out.client_errors
    );
    assert!(!sent(&out, victim, "ShareKeys"), "the victim sent shares");
    assert!(!sent(&out, victim, "MaskedInput"));
    assert_nothing_exposed(&out, &[]);
}

/// A split view of the identity log: the server shows the victim a forked log in which some of
/// its neighbours (here two of five) hold keys the server made, forges those neighbours' R0
/// advertisements with them (valid signatures, matching roster commitments: the attack the
/// plain signature check cannot see, since the victim's own directory vouches for the forged
/// keys), and relays the other neighbours' genuine ones. Every signature binds the signer's
/// view of the round's keys (`IdentityDirectory::digest`), so the genuine ones fail at the
/// victim, which refuses in R1 before it sends a share. (Only a victim isolated entirely, every
/// neighbour's key forged in its view, is not caught in-band: see the README's threat model.)
#[test]
fn a_forked_identity_log_is_refused_before_any_share_leaves() {
    use cohort_aggregation::secagg::identity::{
        SigningKey, advertise_message, round_context, sign,
    };
    let n = 6;
    let mut params = active_params(n, 16);
    params.neighbours = n - 1;
    params.threshold = 5;
    params.min_survivors = 5;
    let keys = identities(n, 5);
    let honest = directory_of(&keys);
    let victim = ClientIndex(1);
    let forged: Vec<ClientIndex> = vec![ClientIndex(2), ClientIndex(3)];
    let server_keys: BTreeMap<ClientIndex, SigningKey> = forged
        .iter()
        .map(|u| (*u, SigningKey::from_bytes(&[u.0 as u8 + 40; 32])))
        .collect();
    let mut fork = honest.clone();
    for (u, k) in &server_keys {
        fork.insert(*u, k.verifying_key());
    }
    assert_ne!(fork.digest(), honest.digest());
    let mut h = Harness::new(params.clone(), 5);
    for (i, key) in keys.into_iter().enumerate() {
        h.options[i].identity = Some(key);
        h.options[i].directory = Some(if i == 0 { fork.clone() } else { honest.clone() });
    }
    let context = round_context(h.round_id(), &params);
    let fork_digest = fork.digest();
    h.server_tamper = Some(Box::new(move |to, m| match m {
        ServerMessage::ShareKeys(mut r) if to == victim => {
            for p in r
                .peers
                .iter_mut()
                .filter(|p| server_keys.contains_key(&p.index))
            {
                let c = [p.index.0 as u8 + 100; 32];
                let s = [p.index.0 as u8 + 150; 32];
                p.c_pk = ByteBuf::from(c.to_vec());
                p.s_pk = ByteBuf::from(s.to_vec());
                let m = advertise_message(&context, &fork_digest, p.index, &c, &s);
                p.signature = Some(ByteBuf::from(sign(&server_keys[&p.index], &m).to_vec()));
                let entry = r.roster.iter_mut().find(|e| e.index == p.index).unwrap();
                entry.digest = ByteBuf::from(kdf::key_commitment(&c, &s).to_vec());
            }
            ServerMessage::ShareKeys(r)
        }
        m => m,
    }));
    let out = h.run();
    let error = error_of(&out, victim);
    assert!(error.contains("signature"), "{error}");
    // The forged neighbours passed; a genuine one failed under the victim's view.
    assert!(
        !error.contains("client #2") && !error.contains("client #3"),
        "{error}"
    );
    assert!(!sent(&out, victim, "ShareKeys"), "the victim sent shares");
    assert!(!sent(&out, victim, "MaskedInput"));
    assert_nothing_exposed(&out, &[]);
}

/// The same on a Harary graph, and without rewriting the roster: the commitment check refuses.
#[test]
fn key_substitution_is_refused_by_the_roster_commitments() {
    let mut h = active_without_server_checks(20, 16, 2);
    let victim = ClientIndex(4);
    h.server_tamper = Some(Box::new(move |to, m| match m {
        ServerMessage::ShareKeys(mut r) if to == victim => {
            let p = r.peers.iter_mut().find(|p| p.index != victim).unwrap();
            p.c_pk = ByteBuf::from(vec![7; 32]);
            ServerMessage::ShareKeys(r)
        }
        m => m,
    }));
    let out = h.run();
    assert!(
        error_of(&out, victim).contains("commitment"),
        "{:?}",
        out.client_errors
    );
    assert!(!sent(&out, victim, "ShareKeys"));
    assert_nothing_exposed(&out, &[]);
}

// ---------------------------------------------------------------------------------------------
// Inconsistent R3 lists
// ---------------------------------------------------------------------------------------------

/// The server tells half of a survivor's neighbours that it dropped (asking for its mask-key
/// share) and the others that it survived (asking for its self-mask share). The R3 lists no
/// longer match the U3 the clients signed, so the told ones refuse; no key share of a survivor
/// ever leaves a client.
#[test]
fn inconsistent_r3_lists_are_refused() {
    let mut h = Harness::new_active(active_params(20, 16), 5);
    let victim = ClientIndex(7);
    let told: Rc<RefCell<Vec<ClientIndex>>> = Rc::default();
    let told_in = told.clone();
    let mut flip = false;
    h.server_tamper = Some(Box::new(move |to, m| match m {
        ServerMessage::Unmask(mut r) if to != victim && r.survivors.contains(&victim) => {
            flip = !flip;
            if flip {
                r.survivors.retain(|v| *v != victim);
                r.dropped.push(victim);
                r.dropped.sort();
                told_in.borrow_mut().push(to);
            }
            ServerMessage::Unmask(r)
        }
        m => m,
    }));
    let out = h.run();
    let told = told.borrow().clone();
    assert!(!told.is_empty());
    for u in &told {
        assert!(
            error_of(&out, *u).contains("signed"),
            "{u}: {:?}",
            out.client_errors
        );
    }
    let u3 = out.server.members(3);
    for (from, m) in &out.to_server {
        if let ClientMessage::Unmask(r) = m {
            for s in &r.key_shares {
                assert!(
                    !u3.contains(&s.owner),
                    "{from} revealed the key share of survivor {}",
                    s.owner
                );
            }
        }
    }
    assert_nothing_exposed(&out, &[]);
}

/// The server shows some clients a U3 without the victim in R2.5. They sign that set; the
/// signatures it can show them in R3 are on the real U3 (or on theirs, from fewer than t
/// signers), so they reveal nothing.
#[test]
fn a_split_survivor_set_gets_no_shares_revealed() {
    let mut h = active_without_server_checks(20, 16, 6);
    let victim = ClientIndex(3);
    let split: Rc<RefCell<Vec<ClientIndex>>> = Rc::default();
    let split_in = split.clone();
    h.server_tamper = Some(Box::new(move |to, m| match m {
        ServerMessage::ConsistencyCheck(r) if to != victim && to.0 % 3 == 0 => {
            split_in.borrow_mut().push(to);
            ServerMessage::ConsistencyCheck(ConsistencyCheckRequest {
                round_id: r.round_id,
                survivors: r.survivors.into_iter().filter(|v| *v != victim).collect(),
            })
        }
        m => m,
    }));
    let out = h.run();
    let split = split.borrow().clone();
    assert!(split.len() >= 2);
    for u in &split {
        assert!(
            error_of(&out, *u).contains("valid signatures"),
            "{u}: {:?}",
            out.client_errors
        );
        assert!(!sent(&out, *u, "Unmask"), "{u} revealed shares");
    }
    assert_nothing_exposed(&out, &[]);
}

// ---------------------------------------------------------------------------------------------
// Adaptive neighbour placement
// ---------------------------------------------------------------------------------------------

/// The server puts a client of its choice (with genuine, signed keys) among the victim's
/// neighbours. The victim recomputes the graph from the roster and refuses.
#[test]
fn adaptive_neighbour_placement_is_refused() {
    let n = 20;
    let mut h = active_without_server_checks(n, 16, 8);
    let victim = ClientIndex(n);
    let seen: Rc<RefCell<BTreeMap<ClientIndex, PeerKeys>>> = Rc::default();
    let seen_in = seen.clone();
    h.server_tamper = Some(Box::new(move |to, m| match m {
        ServerMessage::ShareKeys(mut r) => {
            if to != victim {
                for p in &r.peers {
                    seen_in.borrow_mut().insert(p.index, p.clone());
                }
                return ServerMessage::ShareKeys(r);
            }
            let known = seen_in.borrow();
            let outsider = known
                .keys()
                .find(|v| r.peers.iter().all(|p| p.index != **v))
                .copied()
                .expect("a non-neighbour");
            let slot = r.peers.iter().position(|p| p.index != victim).unwrap();
            r.peers[slot] = known[&outsider].clone();
            r.peers.sort_by_key(|p| p.index);
            ServerMessage::ShareKeys(r)
        }
        m => m,
    }));
    let out = h.run();
    assert!(
        error_of(&out, victim).contains("not a neighbour"),
        "{:?}",
        out.client_errors
    );
    assert!(!sent(&out, victim, "ShareKeys"));
    assert_nothing_exposed(&out, &[]);
}

/// A server that re-draws the roster (drops one R0 answer) moves everyone: a client shown a
/// roster that does not match the graph it is given refuses.
#[test]
fn a_roster_that_does_not_match_the_graph_is_refused() {
    let mut h = active_without_server_checks(20, 16, 9);
    let victim = ClientIndex(2);
    h.server_tamper = Some(Box::new(move |to, m| match m {
        ServerMessage::ShareKeys(mut r) if to == victim => {
            let outsider: Vec<KeyCommitment> = r
                .roster
                .iter()
                .filter(|e| r.peers.iter().all(|p| p.index != e.index))
                .take(1)
                .cloned()
                .collect();
            r.roster.retain(|e| e.index != outsider[0].index);
            ServerMessage::ShareKeys(r)
        }
        m => m,
    }));
    let out = h.run();
    let e = error_of(&out, victim);
    assert!(e.contains("neighbour"), "{e}");
    assert!(!sent(&out, victim, "ShareKeys"));
    assert_nothing_exposed(&out, &[]);
}

// ---------------------------------------------------------------------------------------------
// Mask starvation and the other client refusals
// ---------------------------------------------------------------------------------------------

/// The server relays only t − 1 ciphertexts to the victim (so that it would mask with few
/// neighbours, possibly all colluders): R2 with fewer than t ciphertexts is refused, and no
/// masked input leaves the victim.
#[test]
fn mask_starvation_is_refused() {
    for active in [false, true] {
        let mut h = if active {
            Harness::new_active(active_params(20, 16), 10)
        } else {
            Harness::new(params_for(30, 16), 10)
        };
        let t = h.server.params().threshold as usize;
        let victim = ClientIndex(5);
        h.server_tamper = Some(Box::new(move |to, m| match m {
            ServerMessage::MaskedInputRequest(mut r) if to == victim => {
                r.shares.truncate(t - 1);
                ServerMessage::MaskedInputRequest(r)
            }
            m => m,
        }));
        let out = h.run();
        assert!(
            error_of(&out, victim).contains("threshold"),
            "{:?}",
            out.client_errors
        );
        assert!(!sent(&out, victim, "MaskedInput"));
        assert_nothing_exposed(&out, &[]);
    }
}

#[test]
fn a_contradicting_second_r3_request_is_refused() {
    let mut h = Harness::new(params_for(30, 8), 11);
    h.drops.insert(ClientIndex(9), DropPoint::BeforeMaskedInput);
    let victim = ClientIndex(1);
    h.inject = Some(Box::new(move |to, m| match m {
        ServerMessage::Unmask(r) if to == victim => {
            let mut second = r.clone();
            let moved = second.survivors.iter().copied().find(|v| *v != victim)?;
            second.survivors.retain(|v| *v != moved);
            second.dropped.push(moved);
            second.dropped.sort();
            Some(ServerMessage::Unmask(second))
        }
        _ => None,
    }));
    let out = h.run();
    assert!(
        error_of(&out, victim).contains("contradicts"),
        "{:?}",
        out.client_errors
    );
    // The first answer revealed self-mask shares only; the contradiction revealed nothing.
    let answers: Vec<_> = out
        .to_server
        .iter()
        .filter(|(f, m)| *f == victim && matches!(m, ClientMessage::Unmask(_)))
        .collect();
    assert_eq!(answers.len(), 1);
    assert_nothing_exposed(&out, &[]);
}

#[test]
fn r3_about_a_non_neighbour_is_refused() {
    let mut h = Harness::new(params_for(30, 8), 12);
    let victim = ClientIndex(1);
    h.server_tamper = Some(Box::new(move |to, m| match m {
        ServerMessage::Unmask(mut r) if to == victim => {
            let outsider = (2..=30)
                .map(ClientIndex)
                .find(|v| !r.survivors.contains(v))
                .unwrap();
            r.dropped.push(outsider);
            r.dropped.sort();
            ServerMessage::Unmask(r)
        }
        m => m,
    }));
    let out = h.run();
    assert!(
        error_of(&out, victim).contains("not a neighbour"),
        "{:?}",
        out.client_errors
    );
    assert!(!sent(&out, victim, "Unmask"));
}

#[test]
fn r3_with_fewer_than_t_survivors_is_refused() {
    let mut h = Harness::new(params_for(30, 8), 13);
    let t = h.server.params().threshold as usize;
    let victim = ClientIndex(1);
    h.server_tamper = Some(Box::new(move |to, m| match m {
        ServerMessage::Unmask(mut r) if to == victim => {
            r.survivors.truncate(t - 1);
            ServerMessage::Unmask(r)
        }
        m => m,
    }));
    let out = h.run();
    assert!(
        error_of(&out, victim).contains("threshold"),
        "{:?}",
        out.client_errors
    );
    assert!(!sent(&out, victim, "Unmask"));
}

// ---------------------------------------------------------------------------------------------
// Aborts reach the clients
// ---------------------------------------------------------------------------------------------

/// Every client still in the round when it aborts gets `RoundResult::Aborted`, whatever the
/// phase of the abort (too few survivors, too few R2.5 signatures).
#[test]
fn every_abort_reaches_the_live_clients() {
    type Setup = fn(&mut Harness);
    let setups: [(Setup, &str); 3] = [
        (
            |h| {
                for u in 1..=4 {
                    h.drops.insert(ClientIndex(u), DropPoint::BeforeMaskedInput);
                }
            },
            "survived",
        ),
        (
            |h| {
                for u in 1..=4 {
                    h.drops.insert(ClientIndex(u), DropPoint::BeforeShareKeys);
                }
            },
            "survived",
        ),
        (
            // Only t − 1 signatures reach the server.
            |h| {
                let t = h.server.params().threshold;
                h.client_tamper = Some(Box::new(move |u, m| match m {
                    ClientMessage::ConsistencyCheck(_) if u.0 >= t => vec![],
                    m => vec![m],
                }));
            },
            "signed",
        ),
    ];
    for (setup, why) in setups {
        let mut h = Harness::new_active(active_params(20, 8), 14);
        setup(&mut h);
        let out = h.run();
        let reason = out.result.as_ref().expect_err("the round aborts");
        assert!(reason.to_string().contains(why), "{reason}");
        if why == "signed" {
            assert!(matches!(reason, AbortReason::TooFewSignatures { .. }));
        }
        for u in (1..=20).map(ClientIndex) {
            if out.client_errors.contains_key(&u) || h_dropped(&out, u) {
                continue;
            }
            assert!(
                matches!(out.results.get(&u), Some(RoundResult::Aborted { .. })),
                "{u} did not get RoundResult::Aborted ({why})"
            );
        }
        assert_nothing_exposed(&out, &[]);
    }
}

/// Whether the harness killed `u` (its last message to the server came before the abort and it
/// got nothing after).
fn h_dropped(out: &Outcome, u: ClientIndex) -> bool {
    !out.results.contains_key(&u)
        && !out
            .to_clients
            .iter()
            .any(|(to, m)| *to == u && matches!(m, ServerMessage::RoundResult(_)))
}

/// Randomized: whatever a server does to R1 peer lists, R2 relays and R3 lists of random
/// clients, no input is ever exposed.
#[test]
fn randomized_tampering_never_exposes_an_input() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    for case in 0..6u64 {
        let mut h = Harness::new_active(active_params(20, 16), 100 + case);
        let targets: Vec<u32> = (0..4).map(|_| rng.random_range(1..=20)).collect();
        let mut r2 = ChaCha20Rng::seed_from_u64(case);
        h.server_tamper = Some(Box::new(move |to, m| {
            if !targets.contains(&to.0) {
                return m;
            }
            match m {
                ServerMessage::ShareKeys(mut r) if r2.random_bool(0.3) => {
                    r.peers.shuffle(&mut r2);
                    r.peers.pop();
                    ServerMessage::ShareKeys(r)
                }
                ServerMessage::MaskedInputRequest(mut r) if r2.random_bool(0.5) => {
                    let keep = r2.random_range(0..=r.shares.len());
                    r.shares.truncate(keep);
                    ServerMessage::MaskedInputRequest(r)
                }
                ServerMessage::Unmask(mut r) if r2.random_bool(0.5) => {
                    if let Some(v) = r.survivors.pop() {
                        r.dropped.push(v);
                        r.dropped.sort();
                    }
                    ServerMessage::Unmask(r)
                }
                m => m,
            }
        }));
        let out = h.run();
        if let Ok(sum) = &out.result {
            assert_eq!(sum.sum, expected_sum(&out.inputs, &sum.contributors));
        }
        assert_nothing_exposed(&out, &[]);
    }
}
