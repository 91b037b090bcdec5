//! Share transport: ChaCha20-Poly1305 (RFC 8439) encryption of the two Shamir shares that client
//! `from` sends to neighbour `to` through the coordinator in R1.
//!
//! * Key: [`super::kdf::share_key`], HKDF of X25519(c_from, c_to) with the round's session id;
//!   the coordinator cannot compute it.
//! * Plaintext (88 bytes): from (u32 BE) ‖ to (u32 BE) ‖ s-share value (40 B) ‖ b-share value
//!   (40 B). The embedded indices are checked on opening, so the coordinator cannot redirect a
//!   ciphertext to another recipient or relabel its sender.
//! * Nonce (96 bits): from (u32 BE) ‖ to (u32 BE) ‖ 0u32. It is not transmitted.
//! * AAD: session_id ‖ from (u32 BE) ‖ to (u32 BE).
//!
//! **Why a deterministic nonce is safe.** A ChaCha20-Poly1305 key must never encrypt two
//! different messages under the same nonce. The key K_uv is specific to one session (the
//! session id is the HKDF salt, and key pairs are fresh per round) and to the pair {u, v}; within
//! a session each direction carries exactly one message (u's shares for v, and v's shares for u),
//! and the two directions get different nonces because (from, to) is ordered. A client that
//! retransmits must resend the same ciphertext (encryption is deterministic, so re-sealing the
//! same shares gives the same bytes), never re-share with fresh randomness under the same key.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use cohort_protocol::ClientIndex;
use thiserror::Error;
use zeroize::Zeroizing;

use super::shamir::{SHARE_LEN, ShamirError, Share};

/// Plaintext length: two indices and two 40-byte share values.
pub const PLAINTEXT_LEN: usize = 8 + 2 * SHARE_LEN;

/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;

/// Length of every ciphertext [`seal_shares`] produces (plaintext + tag; the nonce is implicit).
pub const CIPHERTEXT_LEN: usize = PLAINTEXT_LEN + TAG_LEN;

/// Why a share ciphertext was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CipherError {
    /// The ciphertext had the wrong length.
    #[error(
        "share ciphertext must be {CIPHERTEXT_LEN} bytes, got {len}; the sender or the \
         coordinator corrupted it"
    )]
    BadLength {
        /// The length received.
        len: usize,
    },
    /// Poly1305 verification failed: wrong key, session, sender/recipient pair, or tampering.
    #[error(
        "share ciphertext from {from} to {to} failed authentication; it was tampered with, \
         belongs to another session or pair, or the peer's key is not the one advertised"
    )]
    Authentication {
        /// The claimed sender.
        from: ClientIndex,
        /// The claimed recipient.
        to: ClientIndex,
    },
    /// The authenticated plaintext names another sender or recipient than expected.
    #[error(
        "share ciphertext says it is from client #{embedded_from} to client #{embedded_to}, \
         but was delivered as {from} to {to}; the sender is faulty"
    )]
    WrongEndpoints {
        /// The expected sender.
        from: ClientIndex,
        /// The expected recipient.
        to: ClientIndex,
        /// The sender index inside the plaintext.
        embedded_from: u32,
        /// The recipient index inside the plaintext.
        embedded_to: u32,
    },
    /// A decrypted share value is not a valid field element.
    #[error("share ciphertext from {from} carries an invalid share: {source}")]
    BadShare {
        /// The sender.
        from: ClientIndex,
        /// What was wrong with the share.
        source: ShamirError,
    },
}

/// Encrypts `from`'s shares of its mask key secret (`s_share`) and self-mask seed (`b_share`)
/// for `to`. The shares' x-coordinates are not sent (they are `to`'s index).
pub fn seal_shares(
    key: &[u8; 32],
    session_id: &[u8; 32],
    from: ClientIndex,
    to: ClientIndex,
    s_share: &Share,
    b_share: &Share,
) -> Vec<u8> {
    let mut plaintext = Zeroizing::new([0u8; PLAINTEXT_LEN]);
    plaintext[0..4].copy_from_slice(&from.0.to_be_bytes());
    plaintext[4..8].copy_from_slice(&to.0.to_be_bytes());
    plaintext[8..8 + SHARE_LEN].copy_from_slice(&s_share.to_bytes());
    plaintext[8 + SHARE_LEN..].copy_from_slice(&b_share.to_bytes());

    let aad = aad(session_id, from, to);
    let aead = ChaCha20Poly1305::new(Key::from_slice(key));
    // Encryption only fails for messages longer than ChaCha20's 256 GiB limit.
    aead.encrypt(
        &nonce(from, to),
        Payload {
            msg: plaintext.as_slice(),
            aad: &aad,
        },
    )
    .expect("ChaCha20-Poly1305 encryption of 88 bytes cannot fail")
}

/// Decrypts and checks a ciphertext that `from` sent to `to`; the returned shares (s-share,
/// b-share) carry x = `to.0`, the holder's index.
///
/// # Errors
///
/// [`CipherError::BadLength`], [`CipherError::Authentication`], [`CipherError::WrongEndpoints`]
/// if the plaintext names another pair, [`CipherError::BadShare`] if a share value is not a field
/// element (or `to` is 0).
pub fn open_shares(
    key: &[u8; 32],
    session_id: &[u8; 32],
    from: ClientIndex,
    to: ClientIndex,
    ciphertext: &[u8],
) -> Result<(Share, Share), CipherError> {
    if ciphertext.len() != CIPHERTEXT_LEN {
        return Err(CipherError::BadLength {
            len: ciphertext.len(),
        });
    }
    let aad = aad(session_id, from, to);
    let aead = ChaCha20Poly1305::new(Key::from_slice(key));
    let plaintext = Zeroizing::new(
        aead.decrypt(
            &nonce(from, to),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| CipherError::Authentication { from, to })?,
    );
    if plaintext.len() != PLAINTEXT_LEN {
        // Unreachable for an authentic ciphertext of the checked length; refuse rather than panic.
        return Err(CipherError::BadLength {
            len: ciphertext.len(),
        });
    }

    let embedded_from = read_u32_be(&plaintext[0..4]);
    let embedded_to = read_u32_be(&plaintext[4..8]);
    if embedded_from != from.0 || embedded_to != to.0 {
        return Err(CipherError::WrongEndpoints {
            from,
            to,
            embedded_from,
            embedded_to,
        });
    }
    let share = |bytes: &[u8]| {
        Share::from_bytes(to.0, bytes).map_err(|source| CipherError::BadShare { from, source })
    };
    let s_share = share(&plaintext[8..8 + SHARE_LEN])?;
    let b_share = share(&plaintext[8 + SHARE_LEN..])?;
    Ok((s_share, b_share))
}

/// from (u32 BE) ‖ to (u32 BE) ‖ 0u32.
fn nonce(from: ClientIndex, to: ClientIndex) -> Nonce {
    let mut n = [0u8; 12];
    n[0..4].copy_from_slice(&from.0.to_be_bytes());
    n[4..8].copy_from_slice(&to.0.to_be_bytes());
    Nonce::from(n)
}

/// session_id ‖ from (u32 BE) ‖ to (u32 BE).
fn aad(session_id: &[u8; 32], from: ClientIndex, to: ClientIndex) -> [u8; 40] {
    let mut a = [0u8; 40];
    a[..32].copy_from_slice(session_id);
    a[32..36].copy_from_slice(&from.0.to_be_bytes());
    a[36..40].copy_from_slice(&to.0.to_be_bytes());
    a
}

/// Reads a big-endian u32 from exactly four bytes.
fn read_u32_be(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    u32::from_be_bytes(word)
}
