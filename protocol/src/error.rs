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
    /// A [`ErrorCode::RateLimited`] refusal that says when to retry, in the form
    /// [`WireError::retry_after`] reads back.
    pub fn rate_limited(reason: &str, retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Self::new(
            ErrorCode::RateLimited,
            format!("{reason}; retry in {} s", secs.max(1)),
        )
    }

    /// The retry time a [`ErrorCode::RateLimited`] refusal names ("retry in N s"), if any.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        if self.code != ErrorCode::RateLimited {
            return None;
        }
        let rest = &self.message[self.message.rfind("retry in ")? + "retry in ".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        rest[digits.len()..]
            .starts_with(" s")
            .then(|| digits.parse().ok())
            .flatten()
            .map(std::time::Duration::from_secs)
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_time_round_trips() {
        let e = WireError::rate_limited("too many login attempts", Duration::from_millis(2_500));
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        let other = WireError::new(ErrorCode::BadMessage, "retry in 5 s");
        assert_eq!(
            other.retry_after(),
            None,
            "only rate limits carry a retry time"
        );
        let vague = WireError::new(ErrorCode::RateLimited, "slow down");
        assert_eq!(vague.retry_after(), None);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let e = WireError::new(ErrorCode::Internal, "é".repeat(crate::limits::MAX_TEXT_LEN));
        assert!(e.message.len() <= crate::limits::MAX_TEXT_LEN);
        assert!(e.message.chars().all(|c| c == 'é'));
    }
}
