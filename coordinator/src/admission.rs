//! Who may hold a connection: caps on connections that have not logged in (in total and per
//! remote address), when to answer a connection attempt with a QUIC Retry, and how many
//! sessions one account may hold at once.
//!
//! Every connection attempt passes [`Admission::admit`] before its handshake: over a cap it is
//! refused (a stateless QUIC close, no TLS work). An admitted connection holds a
//! [`PreAuthPermit`] until it logs in or closes. While more handshakes are in progress than
//! [`AdmissionLimits::retry_above_handshakes`], attempts from addresses that have not proven
//! they receive our packets get a QUIC Retry first, so spoofed floods cost no TLS state.
//! A logged-in connection registers with [`Admission::register_session`]; beyond
//! [`AdmissionLimits::max_sessions_per_account`] the account's oldest connection is closed (a
//! device that reconnected after a network change replaces its stale connection).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cohort_net::quinn::{Connection, VarInt};

/// Close code of a connection replaced by a newer session of the same account.
pub const SUPERSEDED: u32 = 5;

/// The caps. The defaults suit a coordinator of up to about 10,000 devices on one machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections that have not logged in yet, from everywhere.
    pub max_unauthenticated: usize,
    /// Connections that have not logged in yet, from one remote address (many devices can
    /// share one address behind a NAT, so this is not small).
    pub max_unauthenticated_per_address: usize,
    /// Above this many handshakes in progress, unvalidated addresses get a QUIC Retry.
    pub retry_above_handshakes: usize,
    /// Logged-in connections one account may hold; the oldest is closed beyond it.
    pub max_sessions_per_account: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_unauthenticated: 4096,
            max_unauthenticated_per_address: 512,
            retry_above_handshakes: 256,
            max_sessions_per_account: 2,
        }
    }
}

#[derive(Debug, Default)]
struct PreAuthCounts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// The shared admission state of one endpoint.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    pre_auth: Mutex<PreAuthCounts>,
    handshakes: AtomicUsize,
    sessions: Mutex<HashMap<String, VecDeque<(u64, Connection)>>>,
}

/// A connection's place among the unauthenticated ones; released when dropped.
#[derive(Debug)]
pub struct PreAuthPermit {
    admission: Arc<Admission>,
    remote: IpAddr,
}

impl Drop for PreAuthPermit {
    fn drop(&mut self) {
        let mut c = self.admission.lock_pre_auth();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_address.get_mut(&self.remote) {
            *n -= 1;
            if *n == 0 {
                c.per_address.remove(&self.remote);
            }
        }
    }
}

/// Counts a handshake in progress until dropped.
#[derive(Debug)]
pub struct HandshakeGuard(Arc<Admission>);

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A logged-in session's registration; removed when dropped.
#[derive(Debug)]
pub struct SessionPermit {
    admission: Arc<Admission>,
    account: String,
    id: u64,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut sessions = self.admission.lock_sessions();
        if let Some(list) = sessions.get_mut(&self.account) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                sessions.remove(&self.account);
            }
        }
    }
}

impl Admission {
    /// Admission state with these caps.
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            pre_auth: Mutex::default(),
            handshakes: AtomicUsize::new(0),
            sessions: Mutex::default(),
        })
    }

    /// The caps.
    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    fn lock_pre_auth(&self) -> std::sync::MutexGuard<'_, PreAuthCounts> {
        self.pre_auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_sessions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<(u64, Connection)>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection from `remote`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, remote: IpAddr) -> Option<PreAuthPermit> {
        let mut c = self.lock_pre_auth();
        let here = c.per_address.get(&remote).copied().unwrap_or(0);
        if c.total >= self.limits.max_unauthenticated
            || here >= self.limits.max_unauthenticated_per_address
        {
            return None;
        }
        c.total += 1;
        c.per_address.insert(remote, here + 1);
        Some(PreAuthPermit {
            admission: self.clone(),
            remote,
        })
    }

    /// Connections admitted that have not logged in yet.
    pub fn unauthenticated(&self) -> usize {
        self.lock_pre_auth().total
    }

    /// Whether a connection attempt from an unvalidated address should get a Retry first.
    pub fn should_retry(&self) -> bool {
        self.handshakes.load(Ordering::Relaxed) >= self.limits.retry_above_handshakes
    }

    /// Counts a handshake in progress.
    pub fn handshake(self: &Arc<Self>) -> HandshakeGuard {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        HandshakeGuard(self.clone())
    }

    /// Registers connection `id` as a session of `account`, closing the account's oldest
    /// sessions beyond the cap.
    pub fn register_session(
        self: &Arc<Self>,
        account: &str,
        id: u64,
        conn: Connection,
    ) -> SessionPermit {
        let evicted: Vec<Connection> = {
            let mut sessions = self.lock_sessions();
            let list = sessions.entry(account.to_string()).or_default();
            list.push_back((id, conn));
            let mut out = Vec::new();
            while list.len() > self.limits.max_sessions_per_account.max(1) {
                if let Some((_, old)) = list.pop_front() {
                    out.push(old);
                }
            }
            out
        };
        for old in evicted {
            tracing::debug!(account, "closing an older session of the account");
            old.close(
                VarInt::from_u32(SUPERSEDED),
                b"a newer session of this account logged in",
            );
        }
        SessionPermit {
            admission: self.clone(),
            account: account.to_string(),
            id,
        }
    }

    /// Logged-in sessions of `account`.
    pub fn sessions_of(&self, account: &str) -> usize {
        self.lock_sessions().get(account).map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_total() {
        let a = Admission::new(AdmissionLimits {
            max_unauthenticated: 3,
            max_unauthenticated_per_address: 2,
            ..AdmissionLimits::default()
        });
        let x: IpAddr = "192.0.2.1".parse().unwrap();
        let y: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = a.admit(x).unwrap();
        let _p2 = a.admit(x).unwrap();
        assert!(a.admit(x).is_none(), "per-address cap");
        let _p3 = a.admit(y).unwrap();
        assert!(a.admit(y).is_none(), "total cap");
        drop(p1);
        assert_eq!(a.unauthenticated(), 2);
        assert!(a.admit(x).is_some(), "a released place is reused");
    }
}
