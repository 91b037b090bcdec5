//! The two message enums: everything a client sends and everything a coordinator sends.

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::ledger::{LedgerPage, LedgerRequest};
use crate::plan::WeightsChunk;
use crate::secagg::{
    AdvertiseKeys, ConsistencyCheckRequest, ConsistencyCheckResponse, MaskedInput,
    MaskedInputRequest, RoundConfig, RoundResult, ShareKeysRequest, ShareKeysResponse,
    UnmaskRequest, UnmaskResponse,
};
use crate::session::{AuthMessage, CheckIn, CheckInResponse, FetchWeights, Hello, HelloAck};

/// A message from an edge client to the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Opens a connection.
    Hello(Hello),
    /// OPAQUE registration or login.
    Auth(AuthMessage),
    /// Asks for work.
    CheckIn(CheckIn),
    /// Asks for weights by hash.
    FetchWeights(FetchWeights),
    /// R0.
    AdvertiseKeys(AdvertiseKeys),
    /// R1.
    ShareKeys(ShareKeysResponse),
    /// R2.
    MaskedInput(MaskedInput),
    /// R2.5.
    ConsistencyCheck(ConsistencyCheckResponse),
    /// R3.
    Unmask(UnmaskResponse),
    /// Asks for this account's contributor-ledger rows of a task, with their proofs.
    Ledger(LedgerRequest),
    /// The client refuses or gives up.
    Error(WireError),
}

/// A message from the coordinator to an edge client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// Answers [`Hello`].
    HelloAck(HelloAck),
    /// OPAQUE registration or login.
    Auth(AuthMessage),
    /// Answers a check-in.
    CheckIn(CheckInResponse),
    /// Part of a weight vector.
    Weights(WeightsChunk),
    /// R0.
    RoundConfig(RoundConfig),
    /// R1.
    ShareKeys(ShareKeysRequest),
    /// R2.
    MaskedInputRequest(MaskedInputRequest),
    /// R2.5.
    ConsistencyCheck(ConsistencyCheckRequest),
    /// R3.
    Unmask(UnmaskRequest),
    /// End of round.
    RoundResult(RoundResult),
    /// Answers [`LedgerRequest`].
    Ledger(LedgerPage),
    /// A refusal.
    Error(WireError),
}

impl ClientMessage {
    /// The variant's name, as logs, errors and traffic metrics name the message.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::Auth(_) => "Auth",
            Self::CheckIn(_) => "CheckIn",
            Self::FetchWeights(_) => "FetchWeights",
            Self::AdvertiseKeys(_) => "AdvertiseKeys",
            Self::ShareKeys(_) => "ShareKeys",
            Self::MaskedInput(_) => "MaskedInput",
            Self::ConsistencyCheck(_) => "ConsistencyCheck",
            Self::Unmask(_) => "Unmask",
            Self::Ledger(_) => "Ledger",
            Self::Error(_) => "Error",
        }
    }
}

impl ServerMessage {
    /// The variant's name, as logs, errors and traffic metrics name the message.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::HelloAck(_) => "HelloAck",
            Self::Auth(_) => "Auth",
            Self::CheckIn(_) => "CheckIn",
            Self::Weights(_) => "Weights",
            Self::RoundConfig(_) => "RoundConfig",
            Self::ShareKeys(_) => "ShareKeys",
            Self::MaskedInputRequest(_) => "MaskedInputRequest",
            Self::ConsistencyCheck(_) => "ConsistencyCheck",
            Self::Unmask(_) => "Unmask",
            Self::RoundResult(_) => "RoundResult",
            Self::Ledger(_) => "Ledger",
            Self::Error(_) => "Error",
        }
    }
}
