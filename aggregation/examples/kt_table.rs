//! Prints the SecAgg+ parameter table: for each cohort size n, the neighbour count k, the
//! threshold t, q_min and the SecAgg+ bytes one client uploads besides its masked vector
//! (R0 keys, R1 share ciphertexts, R3 revealed shares; payloads without framing).
//!
//! `cargo run -p cohort-aggregation --example kt_table [adversarial] [dropout]`

use cohort_aggregation::secagg::cipher::CIPHERTEXT_LEN;
use cohort_aggregation::secagg::params::{AdversaryClass, choose_graph_params_for, min_survivors};
use cohort_aggregation::secagg::shamir::SHARE_LEN;

fn main() {
    let mut args = std::env::args().skip(1);
    let adversarial: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0.05);
    let dropout: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0.10);
    for class in [AdversaryClass::SemiHonest, AdversaryClass::SemiMalicious] {
        println!("{class:?}, adversarial {adversarial}, dropout {dropout}");
        println!("| n | k | t | q_min | graph | bytes per client |");
        println!("|---|---|---|---|---|---|");
        for n in [10u32, 20, 50, 100, 500, 1000] {
            match choose_graph_params_for(n, adversarial, dropout, class) {
                Ok(g) => {
                    let k = g.neighbours as usize;
                    // R0: two keys; R1: one ciphertext (+ 4-byte index) per neighbour; R3: one
                    // share (+ 4-byte owner) per holder, self included.
                    let bytes = 64 + k * (CIPHERTEXT_LEN + 4) + (k + 1) * (SHARE_LEN + 4);
                    println!(
                        "| {n} | {} | {} | {} | {} | {bytes} |",
                        g.neighbours,
                        g.threshold,
                        min_survivors(n, g.threshold, dropout),
                        if g.complete { "complete" } else { "Harary" }
                    );
                }
                Err(e) => println!("| {n} | - | - | - | {e} | - |"),
            }
        }
        println!();
    }
}
