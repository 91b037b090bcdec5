#!/usr/bin/env python3
"""Known answers for cohort_task::ledger's member tree, computed independently of the Rust code.

RFC 6962 §2.1 (RFC 9162 §2.1.1), written out from the RFC's recursive definition:
  MTH({})      = SHA-256()
  MTH({d0})    = SHA-256(0x00 || d0)
  MTH(D[n])    = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])), k the largest power of two < n
with a member's leaf data = weight (u64 big-endian) || account (UTF-8), leaves sorted by account.
The members of case n are ("device-000", 0), ("device-001", 1), ... with weight i % 7.

Run: python3 task/kat/members_root.py   (prints the constants `tests::known_answer_roots` checks;
it also checks every member's RFC 9162 inclusion proof, so the Python verifier agrees too).
"""
import hashlib


def leaf(account, weight):
    return hashlib.sha256(b"\x00" + weight.to_bytes(8, "big") + account.encode()).digest()


def node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def mth(leaves):
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def path(m, leaves):
    n = len(leaves)
    if n <= 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def verify(index, size, proof, leaf_hash, root):
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def members(n):
    return sorted((f"device-{i:03}", i % 7) for i in range(n))


for n in (0, 1, 2, 3, 7, 100):
    ls = [leaf(a, w) for a, w in members(n)]
    root = mth(ls)
    for i in range(n):
        assert verify(i, n, path(i, ls), ls[i], root)
        if n > 1:
            assert not verify((i + 1) % n, n, path(i, ls), ls[i], root)
    print(f"{n:>3} members: {root.hex()}")
print(f"leaf alice/3: {leaf('alice', 3).hex()}")
