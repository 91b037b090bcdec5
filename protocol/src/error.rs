//! Errors that travel on the wire, so a peer learns why it was refused.

use serde::{Deserialize, Serialize};

/// What went wrong, as a machine-readable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer speaks a protocol version this side does not.
    UnsupportedVersion,
    /// The request needs a logged-in account.
    Unauthenticated,
    /// Login or registration failed (the message never says whether the account exists).
    AuthenticationFailed,
    /// Too many failed attempts; try again later.
    RateLimited,
    /// Registration needs a valid invite code.
    InviteRequired,
    /// A message could not be decoded or was not valid in this state.
    BadMessage,
    /// A frame was larger than the limit.
    FrameTooLarge,
    /// The message belongs to a round that is not running (late or replayed).
    RoundClosed,
    /// The client broke a protocol rule and was removed from the round.
    RemovedFromRound,
    /// No such task or weights.
    NotFound,
    /// The server failed; retry later.
    Internal,
}

/// An error message: a code and a sentence for humans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// What went wrong.
    pub code: ErrorCode,
    /// What happened and what to do, for humans (at most [`crate::limits::MAX_TEXT_LEN`] bytes
    /// on the wire; build long ones with [`WireError::new`], which truncates).
    #[serde(deserialize_with = "crate::limits::de::string::<_, { crate::limits::MAX_TEXT_LEN }>")]
    pub message: String,
}

impl WireError {
    /// An error whose message is cut to [`crate::limits::MAX_TEXT_LEN`] bytes (at a character
    /// boundary), so that the peer's bounded decoder accepts it.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        truncate_text(&mut message, crate::limits::MAX_TEXT_LEN);
        Self { code, message }
    }
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
pub fn truncate_text(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}
