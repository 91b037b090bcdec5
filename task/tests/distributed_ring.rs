//! The SecAgg+ ring does not change what a DP round releases. Before packed uploads every
//! round was masked and summed in Z_{2^32}; now a distributed-DP round's ring is Z_{2^b}, b
//! the DP encoding's bits (`RoundPlan::with_distributed_bits`), and a central round's is
//! value bits + ⌈log2 clients⌉. Whole SecAgg+ rounds in memory (the production state machines,
//! the consistency check on, the task's defaults) run the same devices' encodings, with the
//! same seeds, once in the round's own ring and once in the 32-bit ring, and the released mean
//! is bit-for-bit the same: the accuracy-against-ε runs of docs/privacy.md, made with the
//! 32-bit ring, hold for the packed ring as far as the ring goes.

use cohort_aggregation::secagg::client::ClientOptions;
use cohort_aggregation::secagg::{
    ClientRound, ClientStep, IdentityDirectory, ServerAction, ServerEvent, SigningKey, UnmaskedSum,
};
use cohort_aggregation::time::Time;
use cohort_protocol::{ClientIndex, ClientMessage, ContentHash, EncodingParams, ServerMessage};
use cohort_task::cutoff::CutoffRound;
use cohort_task::privacy::{PrivacyCodec, TaskPrivacy, rotation_seed};
use cohort_task::{Attempt, RoundPlan, TaskConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const CLIENTS: u32 = 20;

fn task(privacy: &str) -> TaskConfig {
    TaskConfig::from_toml(&format!(
        r#"
        id = "ring"
        rounds = 10
        [model]
        input_shape = [30]
        num_classes = 3
        hidden = [8]
        [training]
        epochs = 1
        batch_size = 8
        learning_rate = 0.1
        [selection]
        clients_per_round = {CLIENTS}
        over_selection = 0.0
        [privacy]
        noise_multiplier = 1.0
        rounds = 10
        delta = 1e-6
        {privacy}
        "#
    ))
    .unwrap()
}

fn identity(p: usize) -> SigningKey {
    SigningKey::from_bytes(&[p as u8 ^ 0x3c; 32])
}

/// One honest SecAgg+ round of `plan` over `inputs` (one per member, in cohort order),
/// messages delivered in order; the server's and the clients' seeds are fixed.
fn secure_sum(plan: &RoundPlan, inputs: &[Vec<u32>]) -> UnmaskedSum {
    let params = plan.secagg.as_ref().unwrap();
    let n = inputs.len();
    assert_eq!(params.num_clients as usize, n);
    let directory = params.consistency_check.then(|| {
        let mut d = IdentityDirectory::new();
        for p in 0..n {
            d.insert(ClientIndex(p as u32 + 1), identity(p).verifying_key());
        }
        d
    });
    let mut now = Time::ZERO;
    let (mut server, mut pending) = CutoffRound::start_with_identities(
        now,
        plan,
        Attempt::first(1).round_id(),
        ContentHash::of(b"model"),
        [9; 32],
        directory.clone(),
    )
    .unwrap();
    let mut clients: Vec<Option<ClientRound>> = (0..n).map(|_| None).collect();
    loop {
        let mut to_server: Vec<(ClientIndex, ClientMessage)> = Vec::new();
        for action in pending.drain(..) {
            match action {
                ServerAction::Send { to, message } => {
                    let p = to.0 as usize - 1;
                    let reply = match (message, clients[p].as_mut()) {
                        (ServerMessage::RoundConfig(config), None) => {
                            let options = ClientOptions {
                                identity: directory.as_ref().map(|_| identity(p)),
                                directory: directory.clone(),
                                ..ClientOptions::default()
                            };
                            let (c, m) =
                                ClientRound::start_with(config, [p as u8 + 1; 32], options)
                                    .unwrap();
                            clients[p] = Some(c);
                            Some(m)
                        }
                        (m, Some(c)) => match c.handle(m).unwrap() {
                            ClientStep::Send(m) => Some(m),
                            ClientStep::NeedInput => c.provide_input(inputs[p].clone()).unwrap(),
                            ClientStep::Finished(_) => None,
                        },
                        (m, None) => panic!("a message before the round config: {m:?}"),
                    };
                    if let Some(m) = reply {
                        to_server.push((to, m));
                    }
                }
                ServerAction::Unmask(job) => return job.run(1).expect("unmasking succeeds"),
                ServerAction::Aborted(reason) => panic!("round aborted: {reason}"),
                ServerAction::Refused { client, error }
                | ServerAction::Removed { client, error } => {
                    panic!("{client:?}: {error}")
                }
            }
        }
        if to_server.is_empty() {
            // Every member answered: the phase ends at its deadline if not before.
            now = server
                .poll_timeout()
                .expect("a round in progress has a deadline");
            pending = server.handle_timeout(now);
            continue;
        }
        for (from, message) in to_server {
            pending.extend(server.handle(now, ServerEvent::Message { from, message }));
        }
    }
}

/// The plan with its ring widened to 32 bits, the encoding otherwise unchanged: a round as
/// it was before packed uploads.
fn in_32_bit_ring(plan: &RoundPlan) -> RoundPlan {
    let mut wide = plan.clone();
    let encoding = EncodingParams {
        ring_bits: 32,
        ..plan.quantizer.params()
    };
    wide.quantizer = cohort_aggregation::encoding::Quantizer::new(encoding).unwrap();
    wide.secagg.as_mut().unwrap().encoding = encoding;
    wide
}

/// The released mean of one round in `plan`'s ring: every device encodes its own update with
/// the task's codec (device i's randomness seeded by i), the server releases with noise seeded
/// by 5. Returns the unmasked sum too.
fn release(t: &TaskConfig, plan: &RoundPlan, privacy: &TaskPrivacy) -> (Vec<f32>, Vec<u32>) {
    let dim = t.model_spec(None).unwrap().num_parameters().unwrap();
    let codec: PrivacyCodec = privacy.codec(plan, rotation_seed("ring", 1_000_001));
    let inputs: Vec<Vec<u32>> = (0..CLIENTS)
        .map(|i| {
            let mut rng = ChaCha20Rng::seed_from_u64(u64::from(i));
            let update: Vec<f32> = (0..dim)
                .map(|_| (rng.random::<f32>() - 0.5) * 0.2)
                .collect();
            codec.encode(&update, &mut rng).unwrap()
        })
        .collect();
    let sum = secure_sum(plan, &inputs);
    assert_eq!(sum.contributors.len(), CLIENTS as usize);
    let mut privacy = privacy.clone();
    let released = privacy
        .release(
            &codec,
            &sum.sum,
            CLIENTS,
            &mut ChaCha20Rng::seed_from_u64(5),
        )
        .unwrap();
    (released.mean, sum.sum)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_distributed_rounds_release_is_the_same_in_its_b_bit_ring_and_in_a_32_bit_ring() {
    let t = task("mode = \"distributed\"\n[privacy.clip]\nnorm = 1.0\n");
    let dim = t.model_spec(None).unwrap().num_parameters().unwrap();
    let privacy =
        TaskPrivacy::new(t.privacy_plan(dim, Some(10_000)).unwrap().unwrap(), dim).unwrap();
    let b = privacy.distributed_bits().unwrap();
    let packed = privacy
        .plan_round(RoundPlan::new(&t, CLIENTS, dim).unwrap())
        .unwrap();
    assert_eq!(
        packed.ring_bits(),
        b,
        "the ring is the DP encoding's Z_(2^b)"
    );
    assert!(b < 32);
    let wide = in_32_bit_ring(&packed);
    let (mean_b, sum_b) = release(&t, &packed, &privacy);
    let (mean_32, sum_32) = release(&t, &wide, &privacy);
    // The unmasked sums agree mod 2^b (the 32-bit one holds the carries above), and the
    // weight element counts the contributors in both.
    let low = (1u32 << b) - 1;
    for (x, y) in sum_b.iter().zip(&sum_32) {
        assert_eq!(x & low, y & low);
    }
    assert_eq!(sum_b.last(), Some(&CLIENTS));
    assert_eq!(sum_32.last(), Some(&CLIENTS));
    assert_eq!(
        bits(&mean_b),
        bits(&mean_32),
        "the decoded sum is bit-identical"
    );
}

#[test]
fn a_central_rounds_release_does_not_depend_on_the_ring_either() {
    // Central mode's ring is value bits + ⌈log2 20⌉ = 21 bits; the quantizer (value bits, clip)
    // is the same in both rounds, only the ring differs.
    let t = task("mode = \"central\"\n[privacy.clip]\nnorm = 1.0\n");
    let dim = t.model_spec(None).unwrap().num_parameters().unwrap();
    let privacy =
        TaskPrivacy::new(t.privacy_plan(dim, Some(10_000)).unwrap().unwrap(), dim).unwrap();
    let packed = privacy
        .plan_round(RoundPlan::new(&t, CLIENTS, dim).unwrap())
        .unwrap();
    assert_eq!(packed.ring_bits(), 16 + 5);
    let (mean_r, sum_r) = release(&t, &packed, &privacy);
    let (mean_32, sum_32) = release(&t, &in_32_bit_ring(&packed), &privacy);
    // Widened from r bits, the sum is the 32-bit ring's sum (it fits the r-bit ring).
    assert_eq!(sum_r, sum_32);
    assert_eq!(bits(&mean_r), bits(&mean_32));
}
