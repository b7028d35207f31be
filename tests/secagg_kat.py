#!/usr/bin/env python3
"""secagg_kat.py - independent known-answer vectors for fed/secagg.c (tests/test_secagg.c).

Recomputes, with the `cryptography` package and hashlib instead of libsodium, the PRG words,
a pairwise mask seed and a sealed share as docs/secagg.md specifies them, and prints the values
that test_secagg.c pins. Run: python3 tests/secagg_kat.py
"""
import hashlib
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives import serialization

RAW = serialization.Encoding.Raw


def pk_of(sk):
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes(
        RAW, serialization.PublicFormat.Raw)


def x25519(sk, pk):
    return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(pk))


def prg_words(seed, rnd, n):
    # AES-256-CTR (protocol 9): IV = round (8 bytes LE) || "mask" || 32-bit big-endian counter 0
    iv = struct.pack("<Q", rnd) + b"mask" + bytes(4)
    enc = Cipher(algorithms.AES(seed), modes.CTR(iv)).encryptor()
    ks = enc.update(bytes(4 * n))
    return struct.unpack("<%dI" % n, ks)


def pair_seed(sk, pk_me, pk_peer, me, peer, rnd):
    q = x25519(sk, pk_peer)
    lo, hi = min(me, peer), max(me, peer)
    pk_lo, pk_hi = (pk_me, pk_peer) if me < peer else (pk_peer, pk_me)
    msg = b"moeh-secagg-pair-v1" + struct.pack("<QII", rnd, lo, hi) + pk_lo + pk_hi
    return hashlib.blake2b(msg, key=q, digest_size=32).digest()


def seal(plain, rnd, frm, to, c_sk_from, c_pk_from, c_pk_to, s_pk_from, s_pk_to):
    # protocol 10: the crypto_kx pair key (the lower c key plays the kx client), then a session
    # key hashing both sites' s keys of the session
    q = x25519(c_sk_from, c_pk_to)
    if c_pk_from < c_pk_to or (c_pk_from == c_pk_to and frm < to):
        # kx client: rx || tx = H(q || client_pk || server_pk); send with tx
        pair = hashlib.blake2b(q + c_pk_from + c_pk_to, digest_size=64).digest()[32:]
    else:  # kx server: tx || rx = H(q || client_pk || server_pk)
        pair = hashlib.blake2b(q + c_pk_to + c_pk_from, digest_size=64).digest()[:32]
    head = b"moeh-secagg-share-v2" + struct.pack("<QII", rnd, frm, to)
    key = hashlib.blake2b(head + s_pk_from + s_pk_to, key=pair, digest_size=32).digest()
    nonce = struct.pack("<Q", rnd) + bytes(4)
    return ChaCha20Poly1305(key).encrypt(nonce, plain, head)


def main():
    seed = bytes(range(32))
    w = prg_words(seed, 7, 1030)
    print("prg(seed=00..1f, round=7) words 0..3:", ", ".join("0x%08x" % v for v in w[:4]))
    print("prg words 1024..1026:", ", ".join("0x%08x" % v for v in w[1024:1027]))
    sk_a = bytes([0x11] * 32)
    sk_b = bytes([0x22] * 32)
    pa, pb = pk_of(sk_a), pk_of(sk_b)
    s_ab = pair_seed(sk_a, pa, pb, 3, 1, 42)
    s_ba = pair_seed(sk_b, pb, pa, 1, 3, 42)
    assert s_ab == s_ba
    print("pair seed (ids 3,1 round 42):", s_ab.hex())
    plain = bytes(range(80))
    # site A (id 3): c key 0x11.., s key 0x44..; site B (id 1): c key 0x22.., s key 0x55..
    sa, sb = pk_of(bytes([0x44] * 32)), pk_of(bytes([0x55] * 32))
    print("A's c key is", "lower" if pa < pb else "higher", "than B's")
    ct = seal(plain, 42, 3, 1, sk_a, pa, pb, sa, sb)
    print("seal 3->1 round 42 first 16 bytes:", ct[:16].hex(), "tag:", ct[-16:].hex())
    ct2 = seal(plain, 42, 1, 3, sk_b, pb, pa, sb, sa)
    print("seal 1->3 round 42 first 16 bytes:", ct2[:16].hex())
    # the same sites with their ids swapped: A (id 1, the higher c key) is still the kx server
    ct3 = seal(plain, 42, 1, 3, sk_a, pa, pb, sa, sb)
    print("seal A as 1 -> B as 3, round 42, first 16 bytes:", ct3[:16].hex())


if __name__ == "__main__":
    main()
