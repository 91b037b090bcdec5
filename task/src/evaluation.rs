//! Federated evaluation inside the masked vector: each member of an evaluated round measures
//! the round's *starting* model on its own data, and the coordinator learns only the sums of
//! those measurements over the round's contributors, never one device's.
//!
//! When a round is evaluated (the task's `evaluate_every` cadence), its `RoundConfig` carries
//! `evaluate = true` and its vector is [`EvaluationLayout::len`] elements longer
//! ([`crate::plan::RoundPlan::with_federated_evaluation`]). Each client evaluates the weights
//! it received, before training, clips the result ([`LocalEvaluation::scalars`]) and inserts
//! four scalars into the vector it masks, just before the weight element
//! ([`EvaluationLayout::insert`]):
//!
//! | scalar | per client | bits |
//! |---|---|---|
//! | reported | 1 if it evaluated, else 0 (then all four are 0) | 1 |
//! | examples | e = min(examples evaluated, [`MAX_EXAMPLES`]) | 16 |
//! | correct | round(accuracy · e), accuracy clamped to [0, 1] | 16 |
//! | loss | round(e · min(mean loss, [`MAX_LOSS`]) · [`LOSS_UNITS`]) | 32 |
//!
//! Each scalar travels as limbs of the round's ring ([`cohort_aggregation::scalars`]), so the
//! ring sized for the update holds their sums without wrapping; the server removes them from the
//! unmasked sum ([`EvaluationLayout::take`]) before the update is decoded, and
//! [`EvaluationLayout::decode`] turns the sums into the round's [`FederatedEvaluation`]: the
//! example-weighted mean loss and accuracy over the contributors that evaluated.
//!
//! **Bounds.** A device that evaluated more than [`MAX_EXAMPLES`] examples counts as
//! [`MAX_EXAMPLES`] (its mean weighs that much), a mean loss above [`MAX_LOSS`] (or infinite)
//! counts as [`MAX_LOSS`], and a NaN or negative loss, a NaN accuracy or no examples is not
//! reported (zeros: the device is not counted). So one honest device moves the sums by at most
//! those amounts. A malicious device can put anything in its limbs; the server refuses sums
//! that honest contributors could not produce (a limb or scalar sum above its bound, more
//! reporters than contributors, fewer examples than reporters, more correct answers than
//! examples, a loss above [`MAX_LOSS`] per example), and the round is published without a
//! federated evaluation. Within those bounds it can bend the metrics, as it can bend the
//! update within its clip range.
//!
//! **Who is counted.** The sums are over the round's contributors (the inputs in the released
//! sum): a member that drops before its masked input is counted nowhere.

use cohort_aggregation::scalars::{ScalarError, ScalarLayout};
use cohort_aggregation::secagg::UnmaskedSum;
use cohort_protocol::SecAggParams;
use thiserror::Error;

/// The most examples one device's evaluation counts for.
pub const MAX_EXAMPLES: u64 = 65_535;

/// The largest mean loss per example a device reports; larger (and infinite) losses count as
/// this.
pub const MAX_LOSS: f32 = 64.0;

/// Fixed-point units per unit of loss: a device's loss sum is carried in units of 2^-10.
pub const LOSS_UNITS: u32 = 1 << 10;

/// The bits of each scalar, in layout order: reported, examples, correct, loss.
const WIDTHS: [u8; 4] = [1, 16, 16, 32];

/// A device's evaluation of a round's starting model on its own data (never sent as such).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalEvaluation {
    /// Examples evaluated.
    pub examples: u64,
    /// Mean loss per example.
    pub loss: f32,
    /// Fraction of the examples classified correctly.
    pub accuracy: f32,
}

impl LocalEvaluation {
    /// The clipped integer scalars this evaluation contributes (reported, examples, correct,
    /// loss units; see the [module docs](self)), or `None` when it is not reported (no
    /// examples, a NaN or negative loss, a NaN accuracy).
    pub fn scalars(&self) -> Option<[u64; 4]> {
        if self.examples == 0 || self.loss.is_nan() || self.loss < 0.0 || self.accuracy.is_nan() {
            return None;
        }
        let e = self.examples.min(MAX_EXAMPLES);
        let accuracy = f64::from(self.accuracy.clamp(0.0, 1.0));
        let correct = ((accuracy * e as f64).round() as u64).min(e);
        let loss = f64::from(self.loss.min(MAX_LOSS));
        let units = (loss * f64::from(LOSS_UNITS) * e as f64).round() as u64;
        let units = units.min(max_loss_units(e));
        Some([1, e, correct, units])
    }
}

/// The most loss units `examples` examples can carry.
fn max_loss_units(examples: u64) -> u64 {
    examples * (MAX_LOSS as u64) * u64::from(LOSS_UNITS)
}

/// The example-weighted mean of a round's evaluations, from their sums.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FederatedEvaluation {
    /// Contributors that evaluated.
    pub clients: u32,
    /// Examples evaluated, over those clients (each capped at [`MAX_EXAMPLES`]).
    pub examples: u64,
    /// Mean loss per example.
    pub loss: f32,
    /// Fraction of examples classified correctly.
    pub accuracy: f32,
}

impl FederatedEvaluation {
    /// From the sums of the four scalars (reported, examples, correct, loss units); `None`
    /// when nobody reported.
    pub fn from_sums(sums: [u64; 4]) -> Option<Self> {
        let [clients, examples, correct, units] = sums;
        if clients == 0 || examples == 0 {
            return None;
        }
        let n = examples as f64;
        Some(Self {
            clients: u32::try_from(clients).unwrap_or(u32::MAX),
            examples,
            loss: (units as f64 / f64::from(LOSS_UNITS) / n) as f32,
            accuracy: (correct as f64 / n) as f32,
        })
    }
}

/// Why a round's evaluation sums were not turned into a federated evaluation.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EvaluationSumError {
    /// A limb or scalar sum is out of range for the contributors.
    #[error("federated evaluation: {0}")]
    Scalars(#[from] ScalarError),
    /// The sums contradict each other: some contributor sent values it could not have encoded.
    #[error(
        "federated evaluation: the sums of {contributors} contributors are inconsistent \
         ({what}); some client sent values it could not have encoded, so they are discarded"
    )]
    Inconsistent {
        /// The check that failed.
        what: &'static str,
        /// |U3|.
        contributors: usize,
    },
    /// The unmasked sum is too short to hold the evaluation and the weight element.
    #[error("the unmasked sum has {got} elements, too few for {needed} evaluation limbs")]
    TooShort {
        /// The sum's length.
        got: usize,
        /// The evaluation's limbs.
        needed: usize,
    },
}

/// Where an evaluated round carries its evaluation scalars and how. See the
/// [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvaluationLayout {
    scalars: ScalarLayout,
}

impl EvaluationLayout {
    /// The layout in a ring of `ring_bits` bits for sums of at most `summands` clients.
    pub fn new(ring_bits: u8, summands: u32) -> Result<Self, ScalarError> {
        Ok(Self {
            scalars: ScalarLayout::new(&WIDTHS, ring_bits, summands)?,
        })
    }

    /// The layout of a round with these parameters (its ring and its n clients): what the
    /// coordinator's plan and every device derive alike.
    pub fn for_round(params: &SecAggParams) -> Result<Self, ScalarError> {
        Self::new(params.encoding.ring_bits, params.num_clients)
    }

    /// The ring elements the evaluation adds to the vector.
    pub fn len(&self) -> usize {
        self.scalars.len()
    }

    /// Whether the layout adds nothing (never: it has four scalars).
    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty()
    }

    /// The limbs of one device's evaluation (zeros when `None` or not reported).
    pub fn encode(&self, evaluation: Option<&LocalEvaluation>) -> Vec<u32> {
        let values = evaluation
            .and_then(LocalEvaluation::scalars)
            .unwrap_or([0; 4]);
        // Every clipped scalar fits its width, so this cannot fail; zeros if it ever did.
        self.scalars
            .encode(&values)
            .unwrap_or_else(|_| vec![0; self.len()])
    }

    /// Inserts one device's evaluation limbs into its encoded vector, just before the weight
    /// element (the last), so that the weight stays last for every decoder.
    pub fn insert(&self, encoded: &mut Vec<u32>, evaluation: Option<&LocalEvaluation>) {
        let at = encoded.len().saturating_sub(1);
        let limbs = self.encode(evaluation);
        encoded.splice(at..at, limbs);
    }

    /// Removes the evaluation limbs from an unmasked sum (the elements just before the weight
    /// element) and returns them; the rest then decodes as a round without evaluation.
    pub fn take(&self, sum: &mut Vec<u32>) -> Result<Vec<u32>, EvaluationSumError> {
        let needed = self.len();
        if sum.len() < needed + 1 {
            return Err(EvaluationSumError::TooShort {
                got: sum.len(),
                needed,
            });
        }
        let end = sum.len() - 1;
        Ok(sum.drain(end - needed..end).collect())
    }

    /// The federated evaluation of `contributors` inputs from their limb sums (as
    /// [`Self::take`] returns them); `None` when no contributor reported.
    pub fn decode(
        &self,
        limbs: &[u32],
        contributors: usize,
    ) -> Result<Option<FederatedEvaluation>, EvaluationSumError> {
        let sums = self.scalars.decode_sum(limbs, contributors)?;
        let [clients, examples, correct, units] = [sums[0], sums[1], sums[2], sums[3]];
        let inconsistent = |what| EvaluationSumError::Inconsistent { what, contributors };
        if examples < clients {
            return Err(inconsistent("fewer examples than reporting clients"));
        }
        if examples > clients * MAX_EXAMPLES {
            return Err(inconsistent(
                "more examples than the reporting clients may count",
            ));
        }
        if correct > examples {
            return Err(inconsistent("more correct answers than examples"));
        }
        if units > max_loss_units(examples) {
            return Err(inconsistent("a mean loss above the largest reportable"));
        }
        Ok(FederatedEvaluation::from_sums([
            clients, examples, correct, units,
        ]))
    }

    /// [`Self::take`] then [`Self::decode`] on a round's unmasked sum. The limbs are removed
    /// whatever the decoding's result, so the update decodes either way.
    pub fn take_from(
        &self,
        sum: &mut UnmaskedSum,
    ) -> Result<Option<FederatedEvaluation>, EvaluationSumError> {
        let limbs = self.take(&mut sum.sum)?;
        self.decode(&limbs, sum.contributors.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(examples: u64, loss: f32, accuracy: f32) -> LocalEvaluation {
        LocalEvaluation {
            examples,
            loss,
            accuracy,
        }
    }

    /// Adds the vectors mod 2^r.
    fn sum(layout: &EvaluationLayout, evals: &[Option<LocalEvaluation>], r: u8) -> Vec<u32> {
        let mut s = vec![0u32; layout.len()];
        for e in evals {
            for (a, b) in s.iter_mut().zip(layout.encode(e.as_ref())) {
                *a = cohort_aggregation::ring::reduce_one(a.wrapping_add(b), r);
            }
        }
        s
    }

    /// The mean is weighted by examples: 100 examples at 90% and 300 at 50% give 60%, and the
    /// loss likewise (100·0.2 + 300·1.0) / 400 = 0.8; a device that did not evaluate adds
    /// nothing and is not counted.
    #[test]
    fn decodes_the_example_weighted_mean_of_the_reporters() {
        let layout = EvaluationLayout::new(21, 20).unwrap();
        let s = sum(
            &layout,
            &[Some(eval(100, 0.2, 0.9)), None, Some(eval(300, 1.0, 0.5))],
            21,
        );
        let fe = layout.decode(&s, 3).unwrap().unwrap();
        assert_eq!((fe.clients, fe.examples), (2, 400));
        assert!((fe.accuracy - 0.6).abs() < 1e-6, "accuracy {}", fe.accuracy);
        assert!((fe.loss - 0.8).abs() < 1e-3, "loss {}", fe.loss);
        assert_eq!(layout.decode(&sum(&layout, &[None, None], 21), 2), Ok(None));
    }

    /// An honest device's out-of-range values are clipped (examples at 65,535, loss at 64,
    /// accuracy into [0, 1]) or not reported (NaN, negative loss, no examples).
    #[test]
    fn a_device_clips_its_scalars_to_the_documented_bounds() {
        let units = |e: u64, l: u64| e * l * u64::from(LOSS_UNITS);
        assert_eq!(
            eval(1_000_000, f32::INFINITY, 1.5).scalars(),
            Some([1, MAX_EXAMPLES, MAX_EXAMPLES, units(MAX_EXAMPLES, 64)])
        );
        assert_eq!(
            eval(10, 100.0, -0.5).scalars(),
            Some([1, 10, 0, units(10, 64)])
        );
        assert_eq!(eval(4, 0.5, 0.5).scalars(), Some([1, 4, 2, 2048]));
        for bad in [
            eval(0, 0.5, 0.5),
            eval(10, f32::NAN, 0.5),
            eval(10, -1.0, 0.5),
            eval(10, 0.5, f32::NAN),
        ] {
            assert_eq!(bad.scalars(), None, "{bad:?}");
        }
        // The largest honest values of every member of the largest cohort still fit.
        let layout = EvaluationLayout::new(17, 2).unwrap();
        let big = Some(eval(u64::MAX, f32::INFINITY, 1.0));
        let fe = layout
            .decode(&sum(&layout, &[big, big], 17), 2)
            .unwrap()
            .unwrap();
        assert_eq!(
            (fe.clients, fe.examples, fe.loss, fe.accuracy),
            (2, 2 * MAX_EXAMPLES, 64.0, 1.0)
        );
    }

    /// A malicious member writes its own limbs: a reporter flag of 2, an example count
    /// beyond two members' range, more correct answers than examples, or an absurd loss. Each sum is refused, and
    /// `take_from` still strips the limbs so that the update decodes.
    #[test]
    fn sums_a_malicious_member_bent_out_of_range_are_refused() {
        let r = 21;
        let layout = EvaluationLayout::new(r, 20).unwrap();
        assert_eq!(layout.scalars.limb_bits(), 16);
        let honest = layout.encode(Some(&eval(100, 0.5, 0.5)));
        let with = |forged: Vec<u32>| {
            let mut s = honest.clone();
            for (a, b) in s.iter_mut().zip(forged) {
                *a = cohort_aggregation::ring::reduce_one(a.wrapping_add(b), r);
            }
            layout.decode(&s, 2)
        };
        // Layout: [reported | examples | correct | loss lo, loss hi].
        assert_eq!(layout.len(), 5);
        let flag_two = vec![2, 1, 0, 0, 0];
        assert!(matches!(
            with(flag_two),
            Err(EvaluationSumError::Scalars(_))
        ));
        let beyond = vec![1, 1 << 20, 0, 0, 0];
        assert!(matches!(with(beyond), Err(EvaluationSumError::Scalars(_))));
        let too_correct = vec![1, 1, 65_000, 0, 0];
        assert!(matches!(
            with(too_correct),
            Err(EvaluationSumError::Inconsistent { .. })
        ));
        let absurd_loss = vec![1, 1, 0, 0, 60_000];
        assert!(matches!(
            with(absurd_loss),
            Err(EvaluationSumError::Inconsistent { .. })
        ));
        // An honest second member: accepted.
        let fine = layout.encode(Some(&eval(100, 1.5, 1.0)));
        let fe = with(fine).unwrap().unwrap();
        assert_eq!((fe.clients, fe.examples), (2, 200));
        assert!((fe.accuracy - 0.75).abs() < 1e-6 && (fe.loss - 1.0).abs() < 1e-3);

        let mut unmasked = UnmaskedSum {
            round_id: cohort_protocol::RoundId(1),
            sum: vec![7, 8, 9],
            contributors: vec![cohort_protocol::ClientIndex(1)],
            dropped: Vec::new(),
        };
        // [7, 8, limbs.., weight]: the limbs sit before the weight and come out again.
        let weight = 1;
        let mut v = vec![7, 8, weight];
        layout.insert(&mut v, Some(&eval(10, 64.0, 0.0)));
        assert_eq!((v.len(), v[v.len() - 1]), (3 + layout.len(), weight));
        unmasked.sum = v;
        let fe = layout.take_from(&mut unmasked).unwrap().unwrap();
        assert_eq!(unmasked.sum, vec![7, 8, weight]);
        assert_eq!(
            (fe.clients, fe.examples, fe.loss, fe.accuracy),
            (1, 10, 64.0, 0.0)
        );
    }
}
