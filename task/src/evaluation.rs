//! Federated evaluation: the metrics devices report for a round's global model on their own
//! local data, checked and combined into one example-weighted figure per round.
//!
//! When a round is evaluated (the task's `evaluate_every` cadence), its `RoundConfig` carries
//! `evaluate = true`; each client evaluates the weights it received, before training, and sends
//! a [`LocalEvaluation`]. The round driver feeds those to a [`LocalEvaluations`] of the round,
//! which keeps at most one report per member and refuses the rest, and when the round completes
//! [`LocalEvaluations::aggregate`] gives the [`FederatedEvaluation`].
//!
//! Privacy: the reports are plaintext scalars (example count, loss, accuracy), as in Flower's
//! and TensorFlow Federated's federated evaluation. They do not go through SecAgg+, so the
//! coordinator sees each reporting client's metrics; it never sees the client's data or update.

use std::collections::BTreeMap;

use cohort_protocol::{ClientIndex, LocalEvaluation, RoundId};
use thiserror::Error;

/// The example-weighted mean of a round's local evaluations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FederatedEvaluation {
    /// Clients whose report was counted.
    pub clients: u32,
    /// Examples evaluated, over those clients.
    pub examples: u64,
    /// Mean loss per example.
    pub loss: f32,
    /// Fraction of examples classified correctly.
    pub accuracy: f32,
}

/// Why a local evaluation was not counted.
#[derive(Debug, Error, PartialEq)]
pub enum EvaluationRefused {
    /// The report names another round (a late report of an earlier one, or a replay).
    #[error("the report is for round {got}, this round is {expected}; it is ignored")]
    OtherRound {
        /// The report's round.
        got: RoundId,
        /// This round.
        expected: RoundId,
    },
    /// The sender is not one of the round's members.
    #[error("client {0} is not a member of this round; its report is ignored")]
    NotAMember(ClientIndex),
    /// The member already reported for this round; the first report counts.
    #[error("client {0} already reported an evaluation for this round; the first one counts")]
    Duplicate(ClientIndex),
    /// The report claims no examples.
    #[error("the report evaluates 0 examples; a client without local data must not report")]
    NoExamples,
    /// Loss or accuracy is NaN or infinite, negative, or (accuracy) above 1.
    #[error(
        "the report's loss {loss} or accuracy {accuracy} is out of range (finite loss >= 0, \
         accuracy in [0, 1] required)"
    )]
    OutOfRange {
        /// The reported loss.
        loss: f32,
        /// The reported accuracy.
        accuracy: f32,
    },
}

/// The local evaluations received in one round, at most one per member.
#[derive(Clone, Debug)]
pub struct LocalEvaluations {
    round_id: RoundId,
    members: u32,
    reports: BTreeMap<ClientIndex, LocalEvaluation>,
}

impl LocalEvaluations {
    /// An empty collection for round `round_id`, whose members are indices `1..=members`.
    pub fn new(round_id: RoundId, members: u32) -> Self {
        Self {
            round_id,
            members,
            reports: BTreeMap::new(),
        }
    }

    /// Counts `report` from member `from`, or says why it is not counted (the collection is
    /// then unchanged).
    pub fn accept(
        &mut self,
        from: ClientIndex,
        report: LocalEvaluation,
    ) -> Result<(), EvaluationRefused> {
        if report.round_id != self.round_id {
            return Err(EvaluationRefused::OtherRound {
                got: report.round_id,
                expected: self.round_id,
            });
        }
        if from.0 == 0 || from.0 > self.members {
            return Err(EvaluationRefused::NotAMember(from));
        }
        if self.reports.contains_key(&from) {
            return Err(EvaluationRefused::Duplicate(from));
        }
        if report.examples == 0 {
            return Err(EvaluationRefused::NoExamples);
        }
        let loss_ok = report.loss.is_finite() && report.loss >= 0.0;
        let accuracy_ok = (0.0..=1.0).contains(&report.accuracy);
        if !loss_ok || !accuracy_ok {
            return Err(EvaluationRefused::OutOfRange {
                loss: report.loss,
                accuracy: report.accuracy,
            });
        }
        self.reports.insert(from, report);
        Ok(())
    }

    /// Reports counted so far.
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// Whether no report was counted.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// The example-weighted mean loss and accuracy over the counted reports; `None` when there
    /// is none.
    pub fn aggregate(&self) -> Option<FederatedEvaluation> {
        if self.reports.is_empty() {
            return None;
        }
        let mut examples: u64 = 0;
        let mut loss = 0.0f64;
        let mut correct = 0.0f64;
        for r in self.reports.values() {
            examples = examples.saturating_add(r.examples);
            let n = r.examples as f64;
            loss += n * f64::from(r.loss);
            correct += n * f64::from(r.accuracy);
        }
        let total: f64 = self.reports.values().map(|r| r.examples as f64).sum();
        Some(FederatedEvaluation {
            clients: self.reports.len() as u32,
            examples,
            loss: (loss / total) as f32,
            accuracy: (correct / total) as f32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(round: u64, examples: u64, loss: f32, accuracy: f32) -> LocalEvaluation {
        LocalEvaluation {
            round_id: RoundId(round),
            examples,
            loss,
            accuracy,
        }
    }

    /// The mean is weighted by examples: 100 examples at 90% and 300 at 50% give 60%, and the
    /// loss likewise (100·0.2 + 300·1.0) / 400 = 0.8.
    #[test]
    fn aggregates_the_example_weighted_mean() {
        let mut evals = LocalEvaluations::new(RoundId(7), 4);
        assert_eq!(evals.aggregate(), None, "no report, no evaluation");
        evals
            .accept(ClientIndex(1), report(7, 100, 0.2, 0.9))
            .unwrap();
        evals
            .accept(ClientIndex(3), report(7, 300, 1.0, 0.5))
            .unwrap();
        let fe = evals.aggregate().unwrap();
        assert_eq!(fe.clients, 2);
        assert_eq!(fe.examples, 400);
        assert!((fe.accuracy - 0.6).abs() < 1e-6, "accuracy {}", fe.accuracy);
        assert!((fe.loss - 0.8).abs() < 1e-6, "loss {}", fe.loss);
    }

    /// Duplicates, non-members, other rounds, NaN, infinities, out-of-range accuracy and empty
    /// reports are refused and leave the aggregate unchanged.
    #[test]
    fn refuses_duplicates_non_members_and_bad_values() {
        let mut evals = LocalEvaluations::new(RoundId(7), 3);
        evals
            .accept(ClientIndex(2), report(7, 10, 0.5, 0.5))
            .unwrap();
        assert_eq!(
            evals.accept(ClientIndex(2), report(7, 1000, 0.0, 1.0)),
            Err(EvaluationRefused::Duplicate(ClientIndex(2)))
        );
        assert_eq!(
            evals.accept(ClientIndex(4), report(7, 1000, 0.0, 1.0)),
            Err(EvaluationRefused::NotAMember(ClientIndex(4)))
        );
        assert_eq!(
            evals.accept(ClientIndex(0), report(7, 1000, 0.0, 1.0)),
            Err(EvaluationRefused::NotAMember(ClientIndex(0)))
        );
        assert!(matches!(
            evals.accept(ClientIndex(1), report(6, 1000, 0.0, 1.0)),
            Err(EvaluationRefused::OtherRound { .. })
        ));
        assert_eq!(
            evals.accept(ClientIndex(1), report(7, 0, 0.0, 1.0)),
            Err(EvaluationRefused::NoExamples)
        );
        for (loss, accuracy) in [
            (f32::NAN, 0.5),
            (0.5, f32::NAN),
            (f32::INFINITY, 0.5),
            (-1.0, 0.5),
            (0.5, 1.5),
            (0.5, -0.1),
        ] {
            assert!(
                matches!(
                    evals.accept(ClientIndex(1), report(7, 1000, loss, accuracy)),
                    Err(EvaluationRefused::OutOfRange { .. })
                ),
                "loss {loss}, accuracy {accuracy} must be refused"
            );
        }
        assert_eq!(evals.len(), 1);
        assert_eq!(
            evals.aggregate(),
            Some(FederatedEvaluation {
                clients: 1,
                examples: 10,
                loss: 0.5,
                accuracy: 0.5
            })
        );
        // A refused report does not use up the member's one report.
        evals
            .accept(ClientIndex(1), report(7, 30, 0.1, 0.9))
            .unwrap();
        let fe = evals.aggregate().unwrap();
        assert_eq!((fe.clients, fe.examples), (2, 40));
        assert!((fe.accuracy - 0.8).abs() < 1e-6);
    }
}
