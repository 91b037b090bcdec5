//! A device's own checks of a task's differential privacy: the budget against its owner's
//! limit (`cohort-edge run --max-epsilon`), the logged ε, and each round's noise against what
//! the task declares.

mod support;

use support::task;

use cohort_protocol::{ClientIndex, ContentHash, RoundConfig, RoundId, RoundLogEntry, TaskId};
use cohort_task::RoundPlan;
use cohort_task::config::TaskConfig;
use cohort_task::device_privacy::{
    NEXT_CLIP_KEY, PrivacyRefusal, ROUND_CLIP_KEY, check_task, clip_param, logged_clip,
};
use cohort_task::privacy::{PrivacyCodec, quantizer_clip};

const CENTRAL: &str = "[privacy]\nmode = \"central\"\nepsilon = 4.0\nrounds = 3\ndelta = 1e-6\n\
                       [privacy.clip]\nnorm = 1.0\n";
const DISTRIBUTED: &str = "[privacy]\nmode = \"distributed\"\nepsilon = 4.0\nrounds = 3\n\
                           delta = 1e-6\n[privacy.clip]\nnorm = 1.0\n";

const ADAPTIVE: &str = "[privacy]\nmode = \"central\"\nepsilon = 4.0\nrounds = 3\ndelta = 1e-6\n\
                        [privacy.clip]\nnorm = 1.0\nmode = \"adaptive\"\ncount_stddev = 10.0\n";

fn entry(round: u64, params: &str) -> RoundLogEntry {
    RoundLogEntry {
        task: TaskId("dp".into()),
        round: RoundId(round),
        participants: 45,
        input_weights: ContentHash::of(b"a"),
        output_weights: ContentHash::of(b"b"),
        params: serde_bytes::ByteBuf::from(params.as_bytes().to_vec()),
        created_at: 1,
        prev: ContentHash::of(b"p"),
        hash: ContentHash::of(b"h"),
        signature: serde_bytes::ByteBuf::new(),
    }
}

fn round_config(t: &TaskConfig, round_id: u64) -> RoundConfig {
    let dim = t.model_spec(None).unwrap().num_parameters().unwrap();
    let plan = RoundPlan::new(t, 50, dim).unwrap();
    RoundConfig {
        round_id: RoundId(round_id),
        your_index: ClientIndex(1),
        params: plan.secagg.unwrap(),
        model: ContentHash::of(b"w"),
        evaluate: false,
        roster: Vec::new(),
        identity_log: Vec::new(),
    }
}

#[test]
fn a_device_refuses_a_task_above_its_limit() {
    let t = task(CENTRAL);
    let plan = t.plan().unwrap();
    assert_eq!(
        check_task(&plan, &[], Some(2.0)).unwrap_err(),
        PrivacyRefusal::BudgetAboveLimit {
            budget: 4.0,
            limit: 2.0
        }
    );
    let ok = check_task(&plan, &[], Some(4.0)).unwrap().unwrap();
    assert_eq!(ok.plan().epsilon_budget, 4.0);
    // Without a limit, any DP task is accepted.
    assert!(check_task(&plan, &[], None).unwrap().is_some());
}

#[test]
fn a_device_with_a_limit_refuses_a_task_without_dp() {
    let plan = task("").plan().unwrap();
    assert!(plan.privacy.is_none());
    assert_eq!(
        check_task(&plan, &[], Some(8.0)).unwrap_err(),
        PrivacyRefusal::NoPrivacy { limit: 8.0 }
    );
    assert!(check_task(&plan, &[], None).unwrap().is_none());
}

#[test]
fn the_logged_epsilon_is_checked() {
    let plan = task(CENTRAL).plan().unwrap();
    let genesis = entry(0, r#"{"initial_model":true}"#);
    let one = entry(1, r#"{"round_id":1000001,"epsilon_spent":2.5}"#);
    assert!(check_task(&plan, &[genesis.clone(), one.clone()], Some(4.0)).is_ok());
    // More than the device's limit spent already (a budget raised after the fact).
    assert!(matches!(
        check_task(&plan, &[genesis.clone(), one.clone()], Some(2.0)),
        Err(PrivacyRefusal::BudgetAboveLimit { .. })
    ));
    let over = entry(2, r#"{"epsilon_spent":4.5}"#);
    assert!(matches!(
        check_task(&plan, &[genesis.clone(), over], None),
        Err(PrivacyRefusal::LoggedAbove {
            what: "the task's budget",
            ..
        })
    ));
    // Three rounds logged: all the budget allows.
    let log: Vec<RoundLogEntry> = (0..=3)
        .map(|r| entry(r, r#"{"epsilon_spent":3.9}"#))
        .collect();
    assert_eq!(
        check_task(&plan, &log, None).unwrap_err(),
        PrivacyRefusal::BudgetSpent {
            rounds: 3,
            max_rounds: 3
        }
    );
}

#[test]
fn a_round_with_less_noise_than_declared_is_refused() {
    // Distributed: a release threshold below the plan's q_min sums fewer noise shares.
    let t = task(DISTRIBUTED);
    let device = check_task(&t.plan().unwrap(), &[], Some(4.0))
        .unwrap()
        .unwrap();
    let mut config = round_config(&t, 1_000_001);
    let codec = device.check_round("dp", &config).unwrap();
    assert!(matches!(codec, PrivacyCodec::Distributed { .. }));
    // A ring narrower than the DP encoding's Z_{2^b} would drop bits of the sum.
    let b = device.plan().distributed.as_ref().unwrap().bits;
    let encoding = config.params.encoding;
    // What `RoundPlan::with_distributed_bits` sends: the ring of b bits (value bits, unused by
    // the DP encoding, at most that).
    config.params.encoding.ring_bits = b;
    config.params.encoding.value_bits = encoding.value_bits.min(b);
    device.check_round("dp", &config).unwrap();
    config.params.encoding.ring_bits = b - 1;
    config.params.encoding.value_bits = encoding.value_bits.min(b - 1);
    assert!(matches!(
        device.check_round("dp", &config),
        Err(PrivacyRefusal::RoundBelowDeclared {
            what: "the ring's bits",
            ..
        })
    ));
    config.params.encoding = encoding;
    let q_min = device.plan().distributed.as_ref().unwrap().min_survivors;
    config.params.min_survivors = q_min - 1;
    assert!(matches!(
        device.check_round("dp", &config),
        Err(PrivacyRefusal::RoundBelowDeclared {
            what: "the release threshold q_min",
            ..
        })
    ));

    // Central with a fixed clip: a larger clip raises the sensitivity against the same noise.
    let t = task(CENTRAL);
    let device = check_task(&t.plan().unwrap(), &[], None).unwrap().unwrap();
    let mut config = round_config(&t, 2_000_001);
    assert!(matches!(
        device.check_round("dp", &config),
        Ok(PrivacyCodec::Central { .. })
    ));
    config.params.encoding.clip = 2.0;
    assert!(matches!(
        device.check_round("dp", &config),
        Err(PrivacyRefusal::RoundBelowDeclared {
            what: "the clip",
            ..
        })
    ));
    // Weighted inputs (one client counting more than once) are refused too.
    let mut config = round_config(&t, 2_000_001);
    config.params.encoding.max_weight = 5;
    assert!(device.check_round("dp", &config).is_err());
}

/// An evaluated DP round carries the evaluation's limbs beside the DP encoding (outside its
/// rotation and noise): a device accepts the longer vector when the round says it is evaluated,
/// and refuses it otherwise (another layout).
#[test]
fn an_evaluated_round_is_longer_by_the_evaluation_only() {
    for mode in [DISTRIBUTED, CENTRAL] {
        let t = task(mode);
        let device = check_task(&t.plan().unwrap(), &[], None).unwrap().unwrap();
        let dim = t.model_spec(None).unwrap().num_parameters().unwrap();
        let mut plan = RoundPlan::new(&t, 50, dim).unwrap();
        if let Some(d) = &device.plan().distributed {
            plan = plan.with_distributed_bits(d.bits).unwrap();
        }
        let plain_len = plan.secagg.as_ref().unwrap().vector_len;
        let plan = plan.with_federated_evaluation().unwrap();
        let layout = plan.evaluation.clone().unwrap();
        let params = plan.secagg.unwrap();
        assert_eq!(
            params.vector_len as usize,
            plain_len as usize + layout.len()
        );
        let mut config = RoundConfig {
            round_id: RoundId(3_000_001),
            your_index: ClientIndex(1),
            params,
            model: ContentHash::of(b"w"),
            evaluate: true,
            roster: Vec::new(),
            identity_log: Vec::new(),
        };
        device.check_round("dp", &config).unwrap();
        config.evaluate = false;
        assert!(matches!(
            device.check_round("dp", &config),
            Err(PrivacyRefusal::RoundBelowDeclared {
                what: "the masked vector's length",
                ..
            })
        ));
    }
}

#[test]
fn with_adaptive_clipping_a_round_must_use_the_clip_the_log_sets() {
    let t = task(ADAPTIVE);
    let plan = t.plan().unwrap();
    let genesis = entry(0, "{\"initial_model\": true}");
    // After the initial model only: the initial clip (the task's clip.norm, 1.0).
    let device = check_task(&plan, std::slice::from_ref(&genesis), None)
        .unwrap()
        .unwrap();
    let mut config = round_config(&t, 1_000_001);
    assert_eq!(config.params.encoding.clip, 1.0);
    assert!(matches!(
        device.check_round("dp", &config),
        Ok(PrivacyCodec::Central { .. })
    ));
    config.params.encoding.clip = 1.25;
    assert!(matches!(
        device.check_round("dp", &config),
        Err(PrivacyRefusal::ClipNotLogged { round: 1_000_001, got, logged })
            if got == 1.25 && logged == 1.0
    ));

    // After round 1: the clip its entry sets for the next round, as the quantizer's range.
    let next = 1.0 / 3.0 + 1.0;
    let params = serde_json::json!({
        ROUND_CLIP_KEY: clip_param(1.0),
        NEXT_CLIP_KEY: clip_param(next),
    })
    .to_string();
    let log = [genesis.clone(), entry(1, &params)];
    let device = check_task(&plan, &log, None).unwrap().unwrap();
    let mut config = round_config(&t, 2_000_001);
    config.params.encoding.clip = quantizer_clip(next);
    device.check_round("dp", &config).unwrap();
    config.params.encoding.clip = 1.0;
    assert!(matches!(
        device.check_round("dp", &config),
        Err(PrivacyRefusal::ClipNotLogged { .. })
    ));

    // A log that does not say is not held against the round: none sent (the device already
    // verified the head), or a last entry written before clips were logged.
    for log in [vec![], vec![genesis, entry(1, "{}")]] {
        let device = check_task(&plan, &log, None).unwrap().unwrap();
        device.check_round("dp", &config).unwrap();
    }
}

#[test]
fn logged_clips_read_back_exactly() {
    for clip in [1.0, 0.1, 1.0 / 3.0, 1e-7, 123.456_789_012_345_67, f64::MAX] {
        let params = serde_json::json!({ NEXT_CLIP_KEY: clip_param(clip) }).to_string();
        let read = logged_clip(params.as_bytes(), NEXT_CLIP_KEY).unwrap();
        assert_eq!(read.to_bits(), clip.to_bits(), "{clip} as {params}");
        assert_eq!(logged_clip(params.as_bytes(), ROUND_CLIP_KEY), None);
    }
    for bad in ["0", "-1", "NaN", "inf", "x"] {
        let params = serde_json::json!({ NEXT_CLIP_KEY: bad }).to_string();
        assert_eq!(logged_clip(params.as_bytes(), NEXT_CLIP_KEY), None, "{bad}");
    }
    // A number is not the logged format.
    assert_eq!(logged_clip(b"{\"next_clip\": 0.5}", NEXT_CLIP_KEY), None);
}
