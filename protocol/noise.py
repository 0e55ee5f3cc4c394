"""Noise ``XXpsk3_25519_{ChaChaPoly,AESGCM}_SHA256``, Noise spec revision 34.

Message pattern (psk3 puts the pre-shared key at the end of message 3)::

    -> e
    <- e, ee, s, es
    -> s, se, psk

With a PSK modifier every ``e`` token also does ``MixKey(e.pub)``.  Each side
learns the other's static key (the initiator's is readable by the responder
before the PSK is mixed, so a wrong token still tells *who* knocked, which is
how a node tells WRONGSECURITYTOKEN from SECURITYTOKENCHANGED).

Only ``cryptography`` primitives and the stdlib's hmac/hashlib are used.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .errors import HandshakeFailed, LocalProtocolError

DHLEN = 32
HASHLEN = 32
TAGLEN = 16
MAX_NONCE = (1 << 64) - 1
#: Both directions rekey (Noise ``Rekey()``) after this many messages.
REKEY_INTERVAL = 1 << 20
#: A Noise message is at most 65535 bytes (spec section 3).
MAX_NOISE_MESSAGE = 65535
#: Nonces: 32 zero bits, then the 64-bit counter, little-endian for ChaChaPoly and
#: big-endian for AESGCM (spec section 12).
_NONCE_LE = struct.Struct("<4xQ")
_NONCE_BE = struct.Struct(">4xQ")


class Cipher(IntEnum):
    """AEAD ciphers a session may use; the initiator picks, the prologue binds the pick."""

    CHACHAPOLY = 1
    AESGCM = 2

    @property
    def noise_name(self) -> str:
        """The cipher's name in a Noise protocol name."""
        return "ChaChaPoly" if self is Cipher.CHACHAPOLY else "AESGCM"


def protocol_name(cipher: Cipher) -> bytes:
    """The full Noise protocol name for ``cipher``."""
    return f"Noise_XXpsk3_25519_{cipher.noise_name}_SHA256".encode()


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    """Noise's HKDF (section 4.3): two or three 32-byte outputs."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return [out1, out2]
    return [out1, out2, _hmac(temp, out2 + b"\x03")]


class CipherState:
    """A key and a 64-bit counter nonce (Noise section 5.1)."""

    __slots__ = ("_aead", "_cipher", "_k", "_nonce", "n")

    def __init__(self, cipher: Cipher, key: bytes | None = None) -> None:
        self._cipher = cipher
        self._nonce = (_NONCE_LE if cipher is Cipher.CHACHAPOLY else _NONCE_BE).pack
        self._k: bytes | None = None
        self._aead: ChaCha20Poly1305 | AESGCM | None = None
        self.n = 0
        if key is not None:
            self.initialize_key(key)

    def initialize_key(self, key: bytes) -> None:
        """Set a new key and reset the nonce."""
        self._k = key
        self._aead = ChaCha20Poly1305(key) if self._cipher is Cipher.CHACHAPOLY else AESGCM(key)
        self.n = 0

    @property
    def has_key(self) -> bool:
        """True once a key is set."""
        return self._k is not None

    def encrypt_with_ad(self, ad: bytes | None, plaintext: bytes) -> bytes:
        """Encrypt and advance the nonce; plaintext passes through when no key is set."""
        if self._aead is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted; the session must end")
        out = self._aead.encrypt(self._nonce(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes | None, ciphertext: bytes | memoryview) -> bytes:
        """Decrypt and advance; raises ``InvalidTag`` (nonce unchanged) on failure."""
        if self._aead is None:
            return ciphertext if isinstance(ciphertext, bytes) else bytes(ciphertext)
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted; the session must end")
        out = self._aead.decrypt(self._nonce(self.n), ciphertext, ad)
        self.n += 1
        return out

    def rekey(self) -> None:
        """Noise ``Rekey()``: k = ENCRYPT(k, maxnonce, zerolen, zeros)[:32]; n unchanged."""
        if self._aead is None:
            raise LocalProtocolError("rekey before a key was set")
        k = self._aead.encrypt(self._nonce(MAX_NONCE), bytes(32), b"")[:32]
        n = self.n
        self.initialize_key(k)
        self.n = n


class SymmetricState:
    """Chaining key, handshake hash and the handshake's CipherState (section 5.2)."""

    def __init__(self, cipher: Cipher) -> None:
        name = protocol_name(cipher)
        self.h = name.ljust(HASHLEN, b"\x00") if len(name) <= HASHLEN else _hash(name)
        self.ck = self.h
        self.cipher = cipher
        self.cs = CipherState(cipher)

    def mix_key(self, ikm: bytes) -> None:
        """MixKey: new chaining key and cipher key from ``ikm``."""
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cs.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        """MixHash: h = HASH(h || data)."""
        self.h = _hash(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        """MixKeyAndHash, used for the psk token."""
        self.ck, temp_h, temp_k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cs.initialize_key(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """Encrypt with h as associated data, then mix the ciphertext into h."""
        ct = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Decrypt with h as associated data, then mix the ciphertext into h."""
        pt = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[CipherState, CipherState]:
        """The two transport CipherStates (initiator->responder, responder->initiator)."""
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(self.cipher, k1), CipherState(self.cipher, k2)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """Raw 32-byte public key of ``key``."""
    return key.public_key().public_bytes_raw()


class WrongPsk(HandshakeFailed):
    """Message 3 decrypted up to the psk token, then failed: the tokens differ."""


class XXpsk3:
    """One side of the handshake.  ``write_message``/``read_message`` alternate;
    ``remote_static`` is known after message 2 (initiator) or the ``s`` of
    message 3 (responder); ``split()`` after message 3."""

    def __init__(
        self,
        *,
        initiator: bool,
        static: X25519PrivateKey,
        psk: bytes,
        prologue: bytes,
        cipher: Cipher = Cipher.CHACHAPOLY,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        if len(psk) != 32:
            raise LocalProtocolError("the psk must be 32 bytes")
        self.initiator = initiator
        self.ss = SymmetricState(cipher)
        self.ss.mix_hash(prologue)
        self.s = static
        self.s_pub = public_bytes(static)
        self.e = ephemeral
        self.psk = psk
        self.re: bytes | None = None
        self.remote_static: bytes | None = None
        self.step = 0  # messages processed so far, 0..3

    @property
    def complete(self) -> bool:
        """True after all three messages."""
        return self.step == 3

    @property
    def handshake_hash(self) -> bytes:
        """The channel binding value h."""
        return self.ss.h

    def _our_turn(self) -> bool:
        return (self.step % 2 == 0) == self.initiator

    def _dh(self, priv: X25519PrivateKey, pub: bytes) -> bytes:
        try:
            return priv.exchange(X25519PublicKey.from_public_bytes(pub))
        except ValueError as exc:  # all-zero shared secret: a low-order point
            raise HandshakeFailed(f"peer sent an invalid public key: {exc}") from None

    def _write_e(self) -> bytes:
        if self.e is None:
            self.e = X25519PrivateKey.generate()
        pub = public_bytes(self.e)
        self.ss.mix_hash(pub)
        self.ss.mix_key(pub)  # psk modifier
        return pub

    def _read_e(self, msg: bytes, off: int) -> int:
        if len(msg) < off + DHLEN:
            raise HandshakeFailed("handshake message too short for an ephemeral key")
        self.re = msg[off : off + DHLEN]
        self.ss.mix_hash(self.re)
        self.ss.mix_key(self.re)
        return off + DHLEN

    def _read_s(self, msg: bytes, off: int) -> int:
        n = DHLEN + TAGLEN
        if len(msg) < off + n:
            raise HandshakeFailed("handshake message too short for a static key")
        try:
            self.remote_static = self.ss.decrypt_and_hash(msg[off : off + n])
        except InvalidTag:
            raise HandshakeFailed("static key failed to authenticate (tampered or foreign farm)") from None
        return off + n

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce the next handshake message carrying ``payload``."""
        if self.complete or not self._our_turn():
            raise LocalProtocolError("not this side's turn to write a handshake message")
        ss = self.ss
        out = bytearray()
        if self.step == 0:
            out += self._write_e()
        elif self.step == 1:
            out += self._write_e()
            assert self.e is not None and self.re is not None
            ss.mix_key(self._dh(self.e, self.re))  # ee
            out += ss.encrypt_and_hash(self.s_pub)  # s
            ss.mix_key(self._dh(self.s, self.re))  # es (responder side)
        else:
            assert self.re is not None
            out += ss.encrypt_and_hash(self.s_pub)  # s
            ss.mix_key(self._dh(self.s, self.re))  # se (initiator side)
            ss.mix_key_and_hash(self.psk)  # psk
        out += ss.encrypt_and_hash(payload)
        self.step += 1
        if len(out) > MAX_NOISE_MESSAGE:
            raise LocalProtocolError("handshake payload too large")
        return bytes(out)

    def read_message(self, msg: bytes) -> bytes:
        """Consume the peer's next handshake message; return its payload."""
        if self.complete or self._our_turn():
            raise LocalProtocolError("not this side's turn to read a handshake message")
        msg = bytes(msg)
        ss = self.ss
        off = 0
        if self.step == 0:
            off = self._read_e(msg, off)
        elif self.step == 1:
            off = self._read_e(msg, off)
            assert self.e is not None and self.re is not None
            ss.mix_key(self._dh(self.e, self.re))  # ee
            off = self._read_s(msg, off)
            assert self.remote_static is not None
            ss.mix_key(self._dh(self.e, self.remote_static))  # es (initiator side)
        else:
            off = self._read_s(msg, off)
            assert self.e is not None and self.remote_static is not None
            ss.mix_key(self._dh(self.e, self.remote_static))  # se (responder side)
            ss.mix_key_and_hash(self.psk)
        try:
            payload = ss.decrypt_and_hash(msg[off:])
        except InvalidTag:
            if self.step == 2:
                raise WrongPsk("message 3 failed to authenticate: the farm tokens differ") from None
            raise HandshakeFailed(
                "handshake message failed to authenticate (tampered, downgraded or foreign farm)"
            ) from None
        self.step += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) CipherStates for this side."""
        if not self.complete:
            raise LocalProtocolError("split before the handshake completed")
        c1, c2 = self.ss.split()
        return (c1, c2) if self.initiator else (c2, c1)
