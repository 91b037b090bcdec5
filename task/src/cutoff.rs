//! The over-selection cut-off, applied around the SecAgg+ server state machine.
//!
//! With over-selection a round selects more clients than it sums (Bonawitz et al. 2019: select
//! about 130%, keep the first 100% to report). [`CutoffRound`] wraps a [`ServerRound`]: it counts
//! the masked inputs the state machine accepts, and when [`RoundPlan::cutoff`] of them are in, it
//! drops every other member from the round (a dropout for the protocol, whose masks R3 removes)
//! and tells each of them to stop with a [`ServerMessage::Error`] of code
//! [`ErrorCode::RoundClosed`] ([`is_stop`]). Anything a stopped member sends afterwards is
//! refused. The coordinator's round driver and the simulator's SecAgg+ attempt both run their
//! round through it, so the same task sums the same clients in both.
//!
//! Why a cut-off rather than summing every member that finishes: a round then waits for the
//! first T inputs instead of the slowest selected client, every completed round sums the same
//! number of inputs (the quantizer is sized for T, and a differential-privacy calibration can
//! rely on it), and it is the over-selection the literature and the simulator's results describe.

use cohort_aggregation::secagg::{
    ConfigError, IdentityDirectory, Phase, RoundError, ServerAction, ServerEvent, ServerRound,
};
use cohort_aggregation::time::Time;
use cohort_protocol::{
    ClientIndex, ClientMessage, ContentHash, ErrorCode, RoundId, ServerMessage, WireError,
};

use crate::plan::RoundPlan;

/// The sentence a member beyond the cut-off receives.
const STOP_MESSAGE: &str = "the round has the inputs it needs (over-selection); this client's \
                            input is not needed this time and is not part of the sum";

/// Whether `message` is the cut-off's stop notice.
pub fn is_stop(message: &ServerMessage) -> bool {
    matches!(message, ServerMessage::Error(e) if e.code == ErrorCode::RoundClosed && e.message == STOP_MESSAGE)
}

/// Why a planned SecAgg+ round did not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartError {
    /// The plan is a plaintext (simulator-only) round's.
    #[error(
        "the plan has no SecAgg+ parameters (secagg.enabled = false); it is not a SecAgg+ round"
    )]
    Plaintext,
    /// The state machine refused the parameters.
    #[error(transparent)]
    Params(#[from] ConfigError),
}

/// A [`ServerRound`] with the over-selection cut-off applied. Read-only methods of the state
/// machine (`poll_timeout` among them) are reachable through `Deref`; events go through
/// [`CutoffRound::handle`] and [`CutoffRound::handle_timeout`].
#[derive(Debug)]
pub struct CutoffRound {
    round: ServerRound,
    cutoff: usize,
    /// Per member (by index − 1): its masked input was accepted.
    accepted: Vec<bool>,
    accepted_count: usize,
    /// Per member: dropped by the cut-off.
    stopped: Vec<bool>,
}

impl CutoffRound {
    /// Starts the SecAgg+ round of `plan` (which must be a SecAgg+ plan) at `now` and returns
    /// it with its first actions.
    /// Without identity keys the server relays R0 and R2.5 signatures unchecked (the clients
    /// check them in any case); see [`CutoffRound::start_with_identities`].
    pub fn start(
        now: Time,
        plan: &RoundPlan,
        round_id: RoundId,
        model: ContentHash,
        seed: [u8; 32],
    ) -> Result<(Self, Vec<ServerAction>), StartError> {
        Self::start_with_identities(now, plan, round_id, model, seed, None)
    }

    /// [`CutoffRound::start`] with the members' identity keys (cohort index → key), so that
    /// the server removes a member whose R0 or R2.5 signature does not verify instead of
    /// relaying it ([`ServerRound::start_with_identities`]).
    pub fn start_with_identities(
        now: Time,
        plan: &RoundPlan,
        round_id: RoundId,
        model: ContentHash,
        seed: [u8; 32],
        directory: Option<IdentityDirectory>,
    ) -> Result<(Self, Vec<ServerAction>), StartError> {
        let params = plan.secagg.clone().ok_or(StartError::Plaintext)?;
        let n = params.num_clients as usize;
        let (round, actions) = ServerRound::start_with_identities(
            now,
            round_id,
            params,
            model,
            plan.deadlines,
            seed,
            directory,
        )?;
        Ok((
            Self {
                round,
                cutoff: plan.cutoff as usize,
                accepted: vec![false; n],
                accepted_count: 0,
                stopped: vec![false; n],
            },
            actions,
        ))
    }

    /// Feeds one event that happened at `now` to the state machine and returns what to do,
    /// applying the cut-off ([`ServerRound::handle`]).
    pub fn handle(&mut self, now: Time, event: ServerEvent) -> Vec<ServerAction> {
        let input_from = match &event {
            ServerEvent::Message {
                from,
                message: ClientMessage::MaskedInput(_),
            } => Some(*from),
            _ => None,
        };
        if let ServerEvent::Message { from, message } = &event
            && self.is_stopped(*from)
        {
            return vec![ServerAction::Refused {
                client: *from,
                error: RoundError::Late {
                    message: message.kind(),
                    phase: self.round.phase(),
                },
            }];
        }
        let in_r2 = self.round.phase() == Phase::MaskedInput;
        let mut actions = self.round.handle(now, event);
        let Some(from) = input_from else {
            return actions;
        };
        let refused = actions.iter().any(|a| {
            matches!(a, ServerAction::Refused { client, .. } | ServerAction::Removed { client, .. } if *client == from)
        });
        let Some(slot) = self.accepted.get_mut(from.0 as usize - 1) else {
            return actions;
        };
        if !in_r2 || refused || *slot {
            return actions;
        }
        *slot = true;
        self.accepted_count += 1;
        if self.accepted_count == self.cutoff && self.cutoff < self.accepted.len() {
            self.cut(now, &mut actions);
        }
        actions
    }

    /// Tells the state machine the time is `now` ([`ServerRound::handle_timeout`]): the phase
    /// in progress ends if its deadline passed. A timeout accepts no input, so the cut-off has
    /// nothing to count.
    pub fn handle_timeout(&mut self, now: Time) -> Vec<ServerAction> {
        self.round.handle_timeout(now)
    }

    /// Drops every member whose input is not in, and tells each to stop.
    fn cut(&mut self, now: Time, actions: &mut Vec<ServerAction>) {
        for p in 0..self.accepted.len() {
            if self.accepted[p] {
                continue;
            }
            self.stopped[p] = true;
            let i = ClientIndex(p as u32 + 1);
            actions.push(ServerAction::Send {
                to: i,
                message: ServerMessage::Error(WireError {
                    code: ErrorCode::RoundClosed,
                    message: STOP_MESSAGE.into(),
                }),
            });
            actions.extend(self.round.handle(now, ServerEvent::Disconnected(i)));
        }
    }

    /// Whether member `i` was dropped by the cut-off.
    pub fn is_stopped(&self, i: ClientIndex) -> bool {
        i.0 >= 1 && self.stopped.get(i.0 as usize - 1).copied().unwrap_or(false)
    }

    /// Members dropped by the cut-off.
    pub fn stopped(&self) -> usize {
        self.stopped.iter().filter(|&&s| s).count()
    }

    /// The state machine.
    pub fn into_inner(self) -> ServerRound {
        self.round
    }
}

/// A round without a cut-off: every member's input counts (a plan whose cohort is at most its
/// target, or a test that drives a hand-made round).
impl From<ServerRound> for CutoffRound {
    fn from(round: ServerRound) -> Self {
        let n = round.params().num_clients as usize;
        Self {
            round,
            cutoff: n,
            accepted: vec![false; n],
            accepted_count: 0,
            stopped: vec![false; n],
        }
    }
}

impl std::ops::Deref for CutoffRound {
    type Target = ServerRound;

    fn deref(&self) -> &ServerRound {
        &self.round
    }
}
