//! What a coordinator knows after a round, and whether that is enough to unmask one client.
//!
//! The check is by subtraction, not statistics: from everything the server received (R0 keys,
//! R1 ciphertexts, R2 masked inputs, R3 revealed shares) and everything colluding clients hand
//! it (their `ClientRound::start` seed, from which their key pairs and self-mask seed follow, and
//! so every share other clients sent them), it rebuilds every secret it can (each Shamir secret
//! with at least t shares) and subtracts every mask it can rebuild from the victim's masked
//! input. The victim is exposed exactly when that difference equals its true input.

use std::collections::{BTreeMap, BTreeSet};

use cohort_aggregation::secagg::cipher::open_shares;
use cohort_aggregation::secagg::kdf;
use cohort_aggregation::secagg::keys::{KeyPair, parse_public_key};
use cohort_aggregation::secagg::prg::{MaskPrg, MaskSign, apply_mask};
use cohort_aggregation::secagg::seed_rng::round_secrets;
use cohort_aggregation::secagg::shamir::{self, Share};
use cohort_protocol::{ClientIndex, ClientMessage, ServerMessage};

use super::Outcome;

/// A client's round secrets as its seed determines them.
pub struct ClientSecrets {
    pub c: KeyPair,
    pub s: KeyPair,
    pub b: [u8; 32],
}

pub fn secrets_from_seed(seed: [u8; 32]) -> ClientSecrets {
    let r = round_secrets(&seed);
    ClientSecrets {
        c: r.c_keys,
        s: r.s_keys,
        b: *r.self_mask_seed,
    }
}

/// The server's knowledge, with `colluders` handing over their state.
pub struct Knowledge {
    pub threshold: usize,
    /// The round's mask PRG.
    pub prg: MaskPrg,
    /// Session id per recipient of R1 (a dishonest server may send several).
    pub session_ids: BTreeMap<ClientIndex, [u8; 32]>,
    pub keys: BTreeMap<ClientIndex, ([u8; 32], [u8; 32])>,
    pub b_shares: BTreeMap<ClientIndex, BTreeMap<u32, Share>>,
    pub s_shares: BTreeMap<ClientIndex, BTreeMap<u32, Share>>,
    pub colluders: BTreeMap<ClientIndex, ClientSecrets>,
    /// Who each client masked with: the senders of the ciphertexts it was relayed in R2.
    pub masked_with: BTreeMap<ClientIndex, Vec<ClientIndex>>,
    pub masked_inputs: BTreeMap<ClientIndex, Vec<u32>>,
}

impl Knowledge {
    pub fn gather(out: &Outcome, colluders: &[ClientIndex]) -> Self {
        let threshold = out.server.params().threshold as usize;
        let mut k = Knowledge {
            threshold,
            prg: MaskPrg::of(out.server.params().suite),
            session_ids: BTreeMap::new(),
            keys: BTreeMap::new(),
            b_shares: BTreeMap::new(),
            s_shares: BTreeMap::new(),
            colluders: colluders
                .iter()
                .map(|w| (*w, secrets_from_seed(out.seeds[w.0 as usize - 1])))
                .collect(),
            masked_with: BTreeMap::new(),
            masked_inputs: BTreeMap::new(),
        };
        for (to, m) in &out.to_clients {
            match m {
                ServerMessage::ShareKeys(r) => {
                    if let Ok(sid) = <[u8; 32]>::try_from(r.session_id.as_slice()) {
                        k.session_ids.insert(*to, sid);
                    }
                    for p in &r.peers {
                        if let (Ok(c), Ok(s)) =
                            (parse_public_key(&p.c_pk), parse_public_key(&p.s_pk))
                        {
                            k.keys.entry(p.index).or_insert((c, s));
                        }
                    }
                }
                ServerMessage::MaskedInputRequest(r) => {
                    k.masked_with
                        .insert(*to, r.shares.iter().map(|s| s.peer).collect());
                    // A colluder decrypts what it was sent.
                    if let Some(w) = k.colluders.get(to) {
                        let Some(sid) = k.session_ids.get(to) else {
                            continue;
                        };
                        for s in &r.shares {
                            let Some((c_pk, _)) = k.keys.get(&s.peer) else {
                                continue;
                            };
                            let Ok(dh) = w.c.agree(c_pk) else { continue };
                            let key = kdf::share_key(&dh, sid, s.peer, *to);
                            if let Ok((s_share, b_share)) =
                                open_shares(&key, sid, s.peer, *to, &s.ciphertext)
                            {
                                k.s_shares.entry(s.peer).or_default().insert(to.0, s_share);
                                k.b_shares.entry(s.peer).or_default().insert(to.0, b_share);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for (from, m) in &out.to_server {
            match m {
                ClientMessage::MaskedInput(y) => {
                    k.masked_inputs.insert(*from, y.vector.unpack());
                }
                ClientMessage::Unmask(r) => {
                    for (list, store) in [
                        (&r.self_mask_shares, &mut k.b_shares),
                        (&r.key_shares, &mut k.s_shares),
                    ] {
                        for s in list {
                            if let Ok(share) = Share::from_bytes(from.0, &s.share) {
                                store.entry(s.owner).or_default().insert(from.0, share);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        k
    }

    fn rebuild(&self, shares: Option<&BTreeMap<u32, Share>>) -> Option<[u8; 32]> {
        let shares: Vec<Share> = shares?.values().cloned().collect();
        if shares.len() < self.threshold {
            return None;
        }
        shamir::reconstruct(&shares, self.threshold)
            .ok()
            .map(|s| *s)
    }

    /// The self-mask seed b_u, if the server can have it.
    pub fn self_mask(&self, u: ClientIndex) -> Option<[u8; 32]> {
        if let Some(w) = self.colluders.get(&u) {
            return Some(w.b);
        }
        self.rebuild(self.b_shares.get(&u))
    }

    /// The mask secret key s_u, if the server can have it (checked against the advertised key).
    pub fn mask_secret(&self, u: ClientIndex) -> Option<KeyPair> {
        if let Some(w) = self.colluders.get(&u) {
            return Some(KeyPair::from_secret_bytes(*w.s.secret_bytes()));
        }
        let secret = self.rebuild(self.s_shares.get(&u))?;
        let keys = KeyPair::from_secret_bytes(secret);
        (Some(keys.public_bytes()) == self.keys.get(&u).map(|k| k.1)).then_some(keys)
    }

    /// The victim's input as the server can rebuild it: its masked input minus every mask the
    /// server can derive, or `None` when some mask is out of its reach.
    pub fn unmask(&self, u: ClientIndex) -> Option<Vec<u32>> {
        let mut y = self.masked_inputs.get(&u)?.clone();
        let sid = self.session_ids.get(&u)?;
        apply_mask(self.prg, &mut y, &self.self_mask(u)?, MaskSign::Subtract);
        let own = self.mask_secret(u);
        for v in self.masked_with.get(&u)? {
            let (_, s_pk_v) = self.keys.get(v)?;
            let (_, s_pk_u) = self.keys.get(&u)?;
            let dh = match (&own, self.mask_secret(*v)) {
                (Some(su), _) => su.agree(s_pk_v).ok()?,
                (None, Some(sv)) => sv.agree(s_pk_u).ok()?,
                (None, None) => return None,
            };
            let key = kdf::mask_key(&dh, sid, u, *v);
            // u added +PRG when u > v; remove it with the opposite sign.
            let sign = if u > *v {
                MaskSign::Subtract
            } else {
                MaskSign::Add
            };
            apply_mask(self.prg, &mut y, &key, sign);
        }
        Some(y)
    }

    /// Clients (other than colluders) whose input the server can rebuild exactly.
    pub fn exposed(&self, out: &Outcome) -> BTreeSet<ClientIndex> {
        self.masked_inputs
            .keys()
            .filter(|u| !self.colluders.contains_key(u))
            .filter(|u| self.unmask(**u).as_ref() == Some(&out.inputs[u.0 as usize - 1]))
            .copied()
            .collect()
    }
}
