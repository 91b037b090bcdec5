//! [`RoundPlan`]: what one attempt of a round runs with, derived from the task and the cohort
//! that was selected. The coordinator and the simulator both build their rounds from it, so the
//! same task encodes and aggregates the same way in both.
//!
//! For a task with target T = `selection.clients_per_round`, dropout fraction δ and a cohort of
//! n selected clients:
//! - the **quantizer** is sized for T clients of weight `secagg.max_weight`: a round never sums
//!   more than T inputs (see the cut-off below), so the encoding has room for every sum it can
//!   see, whatever the cohort. Its ring has `r = value_bits + ⌈log2(T·max_weight)⌉` bits
//!   (`secagg.value_bits`, [`cohort_aggregation::ring::ring_bits`]), carried in the round's
//!   `EncodingParams::ring_bits` so that the coordinator and every device agree on it; masked
//!   inputs travel packed at r bits. A task whose ring would exceed 32 bits is refused. With
//!   distributed DP the ring is the DP encoding's own ([`RoundPlan::with_distributed_bits`]);
//! - the **cut-off** is `min(T, n)`: with over-selection (n > T) the first T masked inputs are
//!   summed and the other members are dropped from the round ([`crate::cutoff`]);
//! - the **quorum** q = ⌈(1 − δ)·min(T, n)⌉ is the fewest inputs a round releases;
//! - **k and t** come from the aggregation crate's finder for n clients; with over-selection the
//!   graph is sized for the dropout fraction 1 − q/n that the cut-off can cause, so that the
//!   members cut off are dropouts it tolerates, and q_min stays q (or t, if larger); with
//!   `secagg.consistency_check` (the default) the finder's semi-malicious class is used, whose
//!   t is large enough that a server lying about dropouts cannot gather both kinds of share;
//! - the **deadlines** are the task's;
//! - an **evaluated** round ([`RoundPlan::with_federated_evaluation`]) carries the members'
//!   federated-evaluation scalars as extra coordinates of the masked vector, laid out for the
//!   round's ring and n ([`crate::evaluation::EvaluationLayout::for_round`]).

use cohort_aggregation::encoding::{EncodingError, Quantizer, vector_len};
use cohort_aggregation::ring::{self, RingError};
use cohort_aggregation::secagg::{
    ConfigError as ParamsError, PhaseDeadlines, recommended_params_with,
};
use cohort_protocol::{CipherSuite, SecAggParams};

use crate::config::{ConfigError, TaskConfig, invalid};
use crate::evaluation::EvaluationLayout;

/// The fewest clients a SecAgg+ round can have (the protocol needs n ≥ 3: with two, each would
/// learn the other's input from the sum). Selection never starts a smaller round, and a task
/// with fewer `clients_per_round` is refused.
pub const MIN_COHORT: u32 = 3;

/// The fewest inputs a round of `n` clients may release with dropout fraction `dropout`:
/// ⌈(1 − dropout)·n⌉, at least 1.
pub fn quorum(n: u32, dropout: f64) -> u32 {
    let q = ((1.0 - dropout) * f64::from(n) - 1e-9).ceil();
    (q.clamp(1.0, f64::from(n.max(1)))) as u32
}

/// Why no round can be planned for a cohort.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The cohort is smaller than a round can be.
    #[error("a round needs at least {min} clients, the cohort has {selected}")]
    TooFewClients {
        /// Clients selected.
        selected: u32,
        /// The minimum.
        min: u32,
    },
    /// No encoding fits the target and weight.
    #[error(
        "no fixed-point encoding fits {clients} clients of weight up to {max_weight}: {source}; \
         lower secagg.max_weight or selection.clients_per_round"
    )]
    Encoding {
        /// `selection.clients_per_round`.
        clients: u32,
        /// `secagg.max_weight`.
        max_weight: u32,
        /// The encoding's refusal.
        source: EncodingError,
    },
    /// The ring that `secagg.value_bits` and the cohort need is wider than 32 bits.
    #[error(
        "secagg.value_bits = {value_bits} for {clients} clients of weight up to {max_weight}: \
         {source}"
    )]
    Ring {
        /// `selection.clients_per_round`.
        clients: u32,
        /// `secagg.max_weight`.
        max_weight: u32,
        /// `secagg.value_bits`.
        value_bits: u8,
        /// The ring's refusal.
        source: RingError,
    },
    /// The model is too large for one round's vector.
    #[error("the model has {params} parameters, too many for one round's vector")]
    ModelTooLarge {
        /// Parameters.
        params: usize,
    },
    /// The round's ring cannot carry the federated-evaluation sums of its cohort.
    #[error(
        "federated evaluation does not fit this round's ring: {source}; set evaluate_every = 0"
    )]
    Evaluation {
        /// The layout's refusal.
        source: cohort_aggregation::scalars::ScalarError,
    },
    /// The SecAgg+ parameter finder found no k and t.
    #[error(
        "no SecAgg+ parameters for {selected} clients (adversarial fraction {adversarial}, \
         dropout fraction {dropout}): {source}; lower secagg.adversarial_fraction, \
         secagg.dropout_fraction or selection.over_selection, or raise \
         selection.clients_per_round (the consistency check, secagg.consistency_check, needs \
         an honest majority of the cohort beyond twice the dropouts)"
    )]
    Params {
        /// Clients selected.
        selected: u32,
        /// The adversarial fraction used.
        adversarial: f64,
        /// The dropout fraction the graph was sized for.
        dropout: f64,
        /// The finder's refusal.
        source: ParamsError,
    },
}

impl PlanError {
    /// As a configuration error naming the key to change (a task that can never plan a round
    /// is refused when it is read).
    pub fn into_config_error(self) -> ConfigError {
        let key = match &self {
            PlanError::TooFewClients { .. } => "selection.clients_per_round",
            PlanError::Encoding { .. } => "secagg.max_weight",
            PlanError::Ring { .. } => "secagg.value_bits",
            PlanError::ModelTooLarge { .. } => "model",
            PlanError::Evaluation { .. } => "evaluate_every",
            PlanError::Params { .. } => "secagg.dropout_fraction",
        };
        invalid(key, "this value", self.to_string())
    }
}

/// One attempt's plan. See the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPlan {
    /// Clients selected (the round's n).
    pub selected: u32,
    /// Masked inputs summed at most: `min(clients_per_round, selected)`; the rest are cut off.
    pub cutoff: u32,
    /// The fewest inputs the round releases.
    pub quorum: u32,
    /// The encoding of updates (sized for `clients_per_round`).
    pub quantizer: Quantizer,
    /// The SecAgg+ parameters; `None` for a plaintext (simulator-only) task.
    pub secagg: Option<SecAggParams>,
    /// Per-phase deadlines.
    pub deadlines: PhaseDeadlines,
    /// Where an evaluated round's federated-evaluation scalars sit in the vector (`None`: the
    /// round is not evaluated). Set by [`RoundPlan::with_federated_evaluation`].
    pub evaluation: Option<EvaluationLayout>,
}

impl RoundPlan {
    /// The plan for a cohort of `selected` clients and a model of `model_len` parameters.
    pub fn new(task: &TaskConfig, selected: u32, model_len: usize) -> Result<Self, PlanError> {
        let secure = task.secagg.enabled;
        let min = if secure { MIN_COHORT } else { 1 };
        if selected < min {
            return Err(PlanError::TooFewClients { selected, min });
        }
        let target = task.selection.clients_per_round;
        let quantizer = quantizer(task)?;
        let cutoff = target.min(selected);
        let dropout = task.secagg.dropout_fraction;
        let quorum = quorum(cutoff, dropout);
        let secagg = if secure {
            let len = crate::privacy::vector_len(&task.privacy, model_len)
                .unwrap_or_else(|| vector_len(model_len));
            let len =
                u32::try_from(len).map_err(|_| PlanError::ModelTooLarge { params: model_len })?;
            // With over-selection, the members beyond the cut-off drop out of the round: the
            // graph must tolerate losing all but q of the n members.
            let over = selected > cutoff;
            let dropout = if over {
                1.0 - f64::from(quorum) / f64::from(selected)
            } else {
                dropout
            };
            let adversarial = task.secagg.adversarial_fraction;
            let mut params = recommended_params_with(
                selected,
                len,
                quantizer.params(),
                adversarial,
                dropout,
                task.secagg.consistency_check,
            )
            .map_err(|source| PlanError::Params {
                selected,
                adversarial,
                dropout,
                source,
            })?;
            if over {
                params.min_survivors = quorum.max(params.threshold);
            }
            Some(params)
        } else {
            None
        };
        Ok(Self {
            selected,
            cutoff,
            quorum: secagg.as_ref().map_or(quorum, |p| p.min_survivors),
            quantizer,
            secagg,
            deadlines: task.deadlines.phase_deadlines(),
            evaluation: None,
        })
    }

    /// The plan of an evaluated round: every member inserts its federated-evaluation scalars
    /// into the vector it masks ([`crate::evaluation`]), so the vector is
    /// [`EvaluationLayout::len`] elements longer. The layout follows the round's ring and n (a
    /// later [`RoundPlan::with_distributed_bits`] re-derives it). Without SecAgg+ (the
    /// simulator's plaintext rounds) the layout is that of the quantizer's ring and the cut-off.
    pub fn with_federated_evaluation(mut self) -> Result<Self, PlanError> {
        self.set_evaluation()?;
        Ok(self)
    }

    /// Derives the evaluation layout (again, after a ring change), keeping the vector length in
    /// step.
    fn set_evaluation(&mut self) -> Result<(), PlanError> {
        let layout = match &self.secagg {
            Some(p) => EvaluationLayout::for_round(p),
            None => EvaluationLayout::new(self.ring_bits(), self.cutoff),
        }
        .map_err(|source| PlanError::Evaluation { source })?;
        let old = self.evaluation.take().map_or(0, |l| l.len());
        if let Some(p) = self.secagg.as_mut() {
            let len = p.vector_len as usize - old + layout.len();
            p.vector_len =
                u32::try_from(len).map_err(|_| PlanError::ModelTooLarge { params: len })?;
        }
        self.evaluation = Some(layout);
        Ok(())
    }

    /// The plan with the quantizer's coordinate range set to `clip` (a DP round's L2 clip,
    /// which adaptive clipping moves from round to round; weight 1). Value and ring bits are
    /// unchanged.
    pub fn with_clip(mut self, clip: f32) -> Result<Self, PlanError> {
        let clients = self.quantizer.max_clients();
        let max_weight = self.quantizer.params().max_weight;
        self.quantizer = self
            .quantizer
            .with_clip(clip)
            .map_err(|source| PlanError::Encoding {
                clients,
                max_weight,
                source,
            })?;
        if let Some(p) = self.secagg.as_mut() {
            p.encoding = self.quantizer.params();
        }
        Ok(self)
    }

    /// The plan for distributed DP, whose encoding wraps each coordinate into Z_{2^bits}
    /// itself (`DistributedParams::bits`): the ring is `max(bits, the bits of the cut-off)`, so
    /// the DP values are summed mod 2^bits exactly as the decoder reads them and the weight
    /// element (the number of contributors, each of weight 1) cannot wrap. The quantizer, which
    /// a distributed round does not encode with, keeps at most that many value bits.
    pub fn with_distributed_bits(mut self, bits: u8) -> Result<Self, PlanError> {
        let ring_bits = bits.max(ring::bits_for(u64::from(self.cutoff))).min(32);
        let params = self.quantizer.params();
        let clients = self.quantizer.max_clients();
        self.quantizer = Quantizer::new(cohort_protocol::EncodingParams {
            value_bits: params.value_bits.min(ring_bits),
            ring_bits,
            ..params
        })
        .map_err(|source| PlanError::Encoding {
            clients,
            max_weight: params.max_weight,
            source,
        })?;
        if let Some(p) = self.secagg.as_mut() {
            p.encoding = self.quantizer.params();
        }
        if self.evaluation.is_some() {
            self.set_evaluation()?;
        }
        Ok(self)
    }

    /// The round's ring bits r: masked inputs travel at r bits a coordinate.
    pub fn ring_bits(&self) -> u8 {
        self.quantizer.ring_bits()
    }

    /// The plan with the SecAgg+ primitive suite set to `suite` (the one every member of the
    /// cohort advertised, from `cohort_aggregation::secagg::negotiate_suite`); without SecAgg+
    /// the plan is unchanged. [`RoundPlan::new`] plans ChaCha20, which every client supports.
    pub fn with_suite(mut self, suite: CipherSuite) -> Self {
        if let Some(p) = self.secagg.as_mut() {
            p.suite = suite;
        }
        self
    }

    /// Whether the round selected more clients than it sums.
    pub fn over_selected(&self) -> bool {
        self.selected > self.cutoff
    }
}

/// The task's encoding: `secagg.value_bits` ([`crate::config::SecAggConfig::value_bits_for`])
/// in the ring sized for `clients_per_round` clients of weight `secagg.max_weight`, the same for
/// every round of the task.
///
/// With differential privacy the coordinate range is the L2 clip `privacy.clip.norm` (every
/// coordinate of a clipped update is within it; adaptive clipping moves it per round, see
/// [`RoundPlan::with_clip`]) and `secagg.clip` is not used.
pub fn quantizer(task: &TaskConfig) -> Result<Quantizer, PlanError> {
    let s = &task.secagg;
    let clients = task.selection.clients_per_round;
    let clip = match (&task.privacy.clip, task.privacy.enabled()) {
        (Some(c), true) if c.norm.is_finite() && c.norm > 0.0 => c.norm as f32,
        _ => s.clip,
    };
    let value_bits = s.value_bits_for(clients);
    Quantizer::for_ring(clients, clip, value_bits, s.max_weight).map_err(|source| match source {
        EncodingError::Ring(source) if s.value_bits.is_some() => PlanError::Ring {
            clients,
            max_weight: s.max_weight,
            value_bits,
            source,
        },
        source => PlanError::Encoding {
            clients,
            max_weight: s.max_weight,
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A digits task of `cpr` clients per round; `selection` and `secagg` are extra lines of
    /// those sections.
    fn parse(cpr: u32, selection: &str, secagg: &str) -> Result<TaskConfig, ConfigError> {
        let text = format!(
            r#"
            id = "t"
            rounds = 1
            [model]
            preset = "digits_mlp"
            [training]
            epochs = 1
            batch_size = 8
            learning_rate = 0.1
            [selection]
            clients_per_round = {cpr}
            {selection}
            [secagg]
            {secagg}
            "#
        );
        TaskConfig::from_toml(&text)
    }

    fn task(cpr: u32, over: f64, dropout: f64) -> TaskConfig {
        parse(
            cpr,
            &format!("over_selection = {over}"),
            &format!("dropout_fraction = {dropout}"),
        )
        .unwrap()
    }

    #[test]
    fn quorum_is_the_ceiling_of_the_surviving_fraction() {
        assert_eq!(quorum(20, 0.1), 18);
        assert_eq!(quorum(10, 0.3), 7);
        assert_eq!(quorum(10, 0.25), 8);
        assert_eq!(quorum(3, 0.99), 1);
        assert_eq!(quorum(0, 0.1), 1);
    }

    #[test]
    fn a_cohort_without_over_selection_uses_the_task_as_is() {
        let t = task(20, 0.0, 0.1);
        let p = RoundPlan::new(&t, 20, 2410).unwrap();
        assert_eq!((p.selected, p.cutoff, p.quorum), (20, 20, 18));
        let s = p.secagg.clone().unwrap();
        assert_eq!(
            (s.num_clients, s.min_survivors, s.vector_len),
            (20, 18, 2411)
        );
        let direct =
            recommended_params_with(20, 2411, p.quantizer.params(), 0.05, 0.1, true).unwrap();
        assert_eq!(s, direct);
        assert_eq!(p.quantizer, Quantizer::for_ring(20, 1.0, 16, 1).unwrap());
        // 16 value bits + ⌈log2 20⌉ = 21 ring bits, in the parameters every member gets.
        assert_eq!((p.ring_bits(), s.encoding.ring_bits), (21, 21));
        assert!(!p.over_selected());
    }

    #[test]
    fn over_selection_cuts_off_at_the_target_and_sizes_the_graph_for_it() {
        let t = task(20, 0.3, 0.1);
        assert_eq!(t.selection.selection_size(), 26);
        let p = RoundPlan::new(&t, 26, 2410).unwrap();
        assert_eq!((p.selected, p.cutoff, p.quorum), (26, 20, 18));
        assert!(p.over_selected());
        let s = p.secagg.clone().unwrap();
        assert_eq!(s.num_clients, 26);
        assert_eq!(s.min_survivors, 18.max(s.threshold));
        // The graph tolerates losing 8 of 26 (the cut-off plus dropouts).
        let sized = recommended_params_with(
            26,
            2411,
            p.quantizer.params(),
            0.05,
            1.0 - 18.0 / 26.0,
            true,
        )
        .unwrap();
        assert_eq!(
            (s.neighbours, s.threshold),
            (sized.neighbours, sized.threshold)
        );
        // The encoding is the task's, whatever the cohort.
        assert_eq!(p.quantizer, RoundPlan::new(&t, 19, 2410).unwrap().quantizer);
    }

    #[test]
    fn a_smaller_cohort_lowers_the_cut_off_and_the_quorum() {
        let t = task(20, 0.3, 0.1);
        let p = RoundPlan::new(&t, 18, 2410).unwrap();
        assert_eq!((p.cutoff, p.quorum), (18, 17));
        assert_eq!(
            RoundPlan::new(&t, 2, 2410),
            Err(PlanError::TooFewClients {
                selected: 2,
                min: MIN_COHORT
            })
        );
        assert_eq!(t.min_cohort(), 18);
    }

    /// `secagg.consistency_check` (on by default) plans the semi-malicious parameters, which
    /// need a larger threshold than the semi-honest ones at the same size; off, the plan is
    /// the semi-honest finder's.
    #[test]
    fn the_consistency_check_picks_the_semi_malicious_parameters() {
        let mut on = task(1000, 0.0, 0.1);
        assert!(on.secagg.consistency_check);
        on.selection.window_secs = 30.0;
        let mut off = on.clone();
        off.secagg.consistency_check = false;
        off.validate().unwrap();
        let p_on = RoundPlan::new(&on, 1000, 2410).unwrap().secagg.unwrap();
        let p_off = RoundPlan::new(&off, 1000, 2410).unwrap().secagg.unwrap();
        assert!(p_on.consistency_check && !p_off.consistency_check);
        assert!(
            p_on.threshold > p_off.threshold,
            "t with the check {} vs without {}",
            p_on.threshold,
            p_off.threshold
        );
        assert!(p_on.neighbours >= p_off.neighbours);
        let q = RoundPlan::new(&off, 1000, 2410).unwrap().quantizer.params();
        assert_eq!(
            p_off,
            recommended_params_with(1000, 2411, q, 0.05, 0.1, false).unwrap()
        );
        assert_eq!(
            p_on,
            recommended_params_with(1000, 2411, q, 0.05, 0.1, true).unwrap()
        );
    }

    fn task_with(cpr: u32, extra: &str) -> Result<TaskConfig, ConfigError> {
        parse(cpr, "", &format!("consistency_check = false\n{extra}"))
    }

    /// The ring is value bits + ⌈log2(clients_per_round × max_weight)⌉, in every round's
    /// parameters; the default 16 value bits are lowered only when the cohort's sum would not
    /// fit 32 bits.
    #[test]
    fn the_ring_has_the_bits_the_sum_needs() {
        for (cpr, extra, value_bits, ring) in [
            (200, "", 16, 24),
            (1000, "", 16, 26),
            (1024, "", 16, 26),
            (1025, "", 16, 27),
            (200, "value_bits = 20", 20, 28),
            (200, "value_bits = 8", 8, 16),
            (100, "max_weight = 65", 16, 29),
            // 16 bits would need 16 + 17 = 33: the default gives way to 15.
            (1000, "max_weight = 100", 15, 32),
        ] {
            let t = task_with(cpr, extra).unwrap();
            let p = RoundPlan::new(&t, cpr, 2410).unwrap();
            let e = p.secagg.as_ref().unwrap().encoding;
            assert_eq!(
                (e.value_bits, e.ring_bits),
                (value_bits, ring),
                "{cpr} {extra}"
            );
            assert_eq!(p.ring_bits(), ring);
            // A smaller cohort of the same task has the same encoding.
            let small = RoundPlan::new(&t, 5.min(cpr), 2410).unwrap();
            assert_eq!(small.quantizer, p.quantizer);
        }
    }

    /// At the capacity of r the largest cohort fits (its ring is 32 bits); one client more is
    /// refused when the task is read, naming `secagg.value_bits`; and value bits outside
    /// 8..=24 are refused by name.
    #[test]
    fn value_bits_are_checked_against_the_ring() {
        let t = task_with(256, "value_bits = 24").unwrap();
        let p = RoundPlan::new(&t, 256, 10).unwrap();
        assert_eq!(p.ring_bits(), 32);
        assert_eq!(p.quantizer.max_clients(), 256);
        let e = task_with(257, "value_bits = 24").unwrap_err();
        assert_eq!(e.key(), Some("secagg.value_bits"), "{e}");
        assert!(e.to_string().contains("33"), "{e}");
        for bad in ["value_bits = 7", "value_bits = 25", "value_bits = 32"] {
            let e = task_with(20, bad).unwrap_err();
            assert_eq!(e.key(), Some("secagg.value_bits"), "{bad}: {e}");
        }
    }

    /// Distributed DP sizes the ring from its own bits (and the cut-off, so that the count of
    /// contributors cannot wrap); the clip keeps the ring.
    #[test]
    fn distributed_bits_and_the_clip_set_the_ring() {
        let t = task(20, 0.0, 0.1);
        let p = RoundPlan::new(&t, 20, 2410).unwrap();
        assert_eq!(p.ring_bits(), 21);
        let d = p.clone().with_distributed_bits(18).unwrap();
        assert_eq!(d.ring_bits(), 18);
        assert_eq!(d.secagg.as_ref().unwrap().encoding.ring_bits, 18);
        assert_eq!(d.quantizer.params().value_bits, 16);
        let d = p.clone().with_distributed_bits(12).unwrap();
        assert_eq!((d.ring_bits(), d.quantizer.params().value_bits), (12, 12));
        let c = p.clone().with_clip(0.25).unwrap();
        assert_eq!(c.ring_bits(), 21);
        assert_eq!(c.secagg.unwrap().encoding.clip, 0.25);
        // 300 contributors need 9 bits for their count: an 8-bit DP ring grows to 9.
        let big = task_with(300, "").unwrap();
        let p = RoundPlan::new(&big, 300, 10).unwrap();
        assert_eq!(p.with_distributed_bits(8).unwrap().ring_bits(), 9);
    }

    #[test]
    fn infeasible_tasks_are_refused_when_read() {
        // 90% dropout leaves no k and t for SecAgg+.
        let text = r#"
            id = "t"
            rounds = 1
            [model]
            preset = "digits_mlp"
            [training]
            epochs = 1
            batch_size = 8
            learning_rate = 0.1
            [selection]
            clients_per_round = 20
            [secagg]
            dropout_fraction = 0.9
            "#;
        let e = TaskConfig::from_toml(text).unwrap_err();
        assert_eq!(e.key(), Some("secagg.dropout_fraction"), "{e}");
        let e = TaskConfig::from_toml(
            &text.replace("dropout_fraction = 0.9", "max_weight = 4000000000"),
        )
        .unwrap_err();
        assert_eq!(e.key(), Some("secagg.max_weight"), "{e}");
    }
}
