//! Issue item 1: parameters that resist two colluding clients at every cohort size, and the
//! k = 2 attack (one colluder plus one genuine dropout unmask a client) that worked against the
//! parameters fcp's finder gives small cohorts.

mod harness;

use cohort_aggregation::secagg::params::{
    AdversaryClass, MIN_COLLUDERS, choose_graph_params_for, min_survivors,
};
use cohort_protocol::ClientIndex;
use harness::knowledge::Knowledge;
use harness::{DropPoint, Harness, expected_sum, params_for};

/// For every n from 3 to 1,000 with the default fractions: t ≥ 3, so two colluding neighbours
/// never hold t shares of anyone; and where the model's colluders plus dropouts could cover a
/// whole neighbourhood (k ≤ A + D), the graph is complete or n ≥ 40, where the finder's own
/// bound (A = ⌊0.05·n⌋ ≥ 2) applies.
#[test]
fn parameters_resist_two_colluders_at_every_cohort_size() {
    for class in [AdversaryClass::SemiHonest, AdversaryClass::SemiMalicious] {
        for n in 3..=1_000u32 {
            let found = choose_graph_params_for(n, 0.05, 0.10, class);
            if class == AdversaryClass::SemiMalicious && n == 3 {
                // Two colluders of three know the third input from the sum anyway: refused.
                assert!(found.is_err(), "n = 3 semi-malicious: {found:?}");
                continue;
            }
            let g = found.unwrap_or_else(|e| panic!("n = {n}: {e}"));
            let (k, t) = (g.neighbours, g.threshold);
            let what = format!("{class:?} n = {n}: k = {k}, t = {t}");
            assert!(t >= 3, "{what}: two colluders would hold t shares");
            assert!(t <= k + 1, "{what}: t above the k + 1 holders");
            let q_min = min_survivors(n, t, 0.10);
            assert!(q_min >= t && q_min <= n, "{what}: q_min = {q_min}");
            let colluders = ((0.05 * f64::from(n)).floor()).max(MIN_COLLUDERS) as u32;
            let dropouts = n / 10;
            if g.complete {
                assert_eq!(k, n - 1, "{what}");
                assert!(t > colluders, "{what}: colluders reach the quorum");
            } else if n < 40 {
                // Deterministically: 2 colluders and ⌊n/10⌋ dropouts cannot be all of N(u).
                assert!(
                    k > colluders + dropouts,
                    "{what}: 2 colluders and {dropouts} dropouts can isolate a client"
                );
            }
            if class == AdversaryClass::SemiMalicious {
                // A server lying about dropouts must not get t shares of both kinds from the
                // k + 1 holders plus two colluders.
                assert!(
                    2 * t > k + 1 + 2 || g.complete,
                    "{what}: both share kinds reachable"
                );
            }
        }
    }
}

/// Runs a round with victim 1, the first `colluders` of its neighbours colluding and the next
/// one dropping after R1; returns whether the server can rebuild x_1 by subtraction.
fn victim_exposed(params: cohort_protocol::SecAggParams, colluders: usize, seed: u64) -> bool {
    let mut h = Harness::new(params, seed);
    // Clients as they were before the parameter floor (which refuses the old parameters).
    for o in &mut h.options {
        o.parameter_floor = false;
    }
    let victim = ClientIndex(1);
    let chosen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let chosen_in_hook = chosen.clone();
    h.on_graph = Some(Box::new(move |graph, drops| {
        let neighbours = graph.neighbours(victim);
        drops.insert(neighbours[colluders], DropPoint::BeforeMaskedInput);
        *chosen_in_hook.borrow_mut() = neighbours[..colluders].to_vec();
    }));
    let out = h.run();
    let sum = out.result.as_ref().expect("the honest round completes");
    assert_eq!(sum.sum, expected_sum(&out.inputs, &sum.contributors));
    assert!(sum.contributors.contains(&victim));
    let colluding = chosen.borrow().clone();
    assert_eq!(colluding.len(), colluders);
    Knowledge::gather(&out, &colluding)
        .exposed(&out)
        .contains(&victim)
}

#[test]
fn k2_attack_works_against_the_old_parameters_and_fails_with_the_new() {
    let n = 10;
    // What the finder returned for n = 10 before it assumed two colluders.
    let mut old = params_for(n, 64);
    old.neighbours = 2;
    old.threshold = 2;
    old.min_survivors = 9;
    for seed in 0..4 {
        assert!(
            victim_exposed(old.clone(), 1, seed),
            "seed {seed}: one colluder and one dropout should unmask the victim at k = 2"
        );
    }
    let new = params_for(n, 64);
    assert!((new.neighbours, new.threshold) >= (4, 3), "{new:?}");
    for seed in 0..4 {
        // Even two colluders and one dropout among its neighbours do not expose it now.
        assert!(
            !victim_exposed(new.clone(), 2, seed),
            "seed {seed}: the victim was exposed with k = {}, t = {}",
            new.neighbours,
            new.threshold
        );
    }
}
