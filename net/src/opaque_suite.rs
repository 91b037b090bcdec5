//! The OPAQUE cipher suite and the key-stretching (Argon2id) parameters.
//!
//! Both ends of an OPAQUE exchange must use the same suite, and the client must stretch the
//! password with the same Argon2 parameters at every login as it did at registration (the
//! envelope the coordinator stores is sealed under the stretched password). The stretching
//! happens only on the client: the coordinator never runs Argon2, which also means a flood of
//! login attempts costs the coordinator little.

use argon2::{Algorithm, Argon2, Params, Version};
use opaque_ke::CipherSuite;
use opaque_ke::key_exchange::tripledh::TripleDh;
use serde::{Deserialize, Serialize};

/// Cohort's OPAQUE suite: Ristretto255 OPRF, TripleDH over Ristretto255 with SHA-512, Argon2id.
#[derive(Debug, Clone, Copy)]
pub struct CohortOpaque;

impl CipherSuite for CohortOpaque {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = Argon2<'static>;
}

/// Argon2id parameters for the client's password stretching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KsfParams {
    /// The argon2 crate's defaults (Argon2id, 19 MiB, 2 passes, 1 lane: the OWASP minimum). A
    /// whole login over loopback QUIC took about 22 ms with them (release build, 2-core build
    /// machine; `cargo bench -p cohort-coordinator --bench login`), against 1.6 ms with
    /// [`KsfParams::dangerous_insecure_fast_for_tests`]. Expect several times more on a phone.
    fn default() -> Self {
        Self {
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
        }
    }
}

impl KsfParams {
    /// The cheapest parameters Argon2 accepts (8 KiB, 1 pass). **Tests and benchmarks only**:
    /// a stolen registration record could then be brute-forced quickly. Named `dangerous_` like
    /// rustls' dangerous options, so that a use outside a test stands out in review
    /// (`grep -rn dangerous_` lists them all).
    pub fn dangerous_insecure_fast_for_tests() -> Self {
        Self {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        }
    }

    /// The Argon2id instance for these parameters.
    pub fn argon2(&self) -> Result<Argon2<'static>, argon2::Error> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// The OPAQUE identifiers of an account: the username as the client identity, and the
/// coordinator's OPAQUE public key as the server identity (opaque-ke's default when none is
/// given, which ties a registration to one coordinator key). Registration and every login must
/// use the same, on both sides.
pub fn identifiers(username: &str) -> opaque_ke::Identifiers<'_> {
    opaque_ke::Identifiers {
        client: Some(username.as_bytes()),
        server: None,
    }
}
