"""protocol.verification.verify: each fact sets its own bit; names parse and
print back; the function is pure and consistent for any facts."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.verification import (
    HandshakeOutcome,
    LocalFacts,
    PeerFacts,
    V,
    VerificationBits,
    bit_names,
    parse_bits,
    verify,
)

KEY = b"\x01" * 32
LOCAL = LocalFacts(build_id="0.1.0+p1.0", arch="x86_64")
GOOD = PeerFacts(outcome=HandshakeOutcome.OK, online=True, build_id="0.1.0+p1.0", arch="x86_64",
                 capabilities=("builtin",), sharing=True, remote_static=KEY, pinned_static=KEY,
                 peer_verified_us=True)
FAILURE_BITS = (V.VERIFICATIONBIT_FAILURE | V.VERIFICATIONBIT_SECURITYTOKENCHANGED
                | V.VERIFICATIONBIT_WRONGBUILDID | V.VERIFICATIONBIT_WRONGARCHITECTURE
                | V.VERIFICATIONBIT_WRONGSECURITYTOKEN | V.VERIFICATIONBIT_REMOTENOTREACHABLE)


def test_all_good_is_verified_online_established_shared_and_verified_me() -> None:
    verdict = verify(LOCAL, GOOD)
    assert verdict.verified and verdict.reason == ""
    assert verdict.bits == (V.VERIFICATIONBIT_VERIFIED | V.VERIFICATIONBIT_ONLINE
                            | V.VERIFICATIONBIT_VERIFICATIONESTABLISHED | V.VERIFICATIONBIT_SHARED
                            | V.VERIFICATIONBIT_VERIFIEDME)


def test_first_contact_without_a_pinned_key_is_verified() -> None:
    verdict = verify(LOCAL, replace(GOOD, pinned_static=None))
    assert verdict.verified and V.VERIFICATIONBIT_FAILURE not in verdict.bits


def test_not_sharing_and_not_yet_verified_by_the_peer_leave_those_bits_clear() -> None:
    verdict = verify(LOCAL, replace(GOOD, sharing=False, peer_verified_us=False))
    assert verdict.verified
    assert V.VERIFICATIONBIT_SHARED not in verdict.bits
    assert V.VERIFICATIONBIT_VERIFIEDME not in verdict.bits


def test_wrong_token_is_wrongsecuritytoken() -> None:
    verdict = verify(LOCAL, PeerFacts(outcome=HandshakeOutcome.WRONG_TOKEN, remote_static=KEY))
    assert verdict.bits == V.VERIFICATIONBIT_WRONGSECURITYTOKEN
    assert not verdict.verified and "token" in verdict.reason


def test_wrong_token_after_earlier_verification_is_securitytokenchanged() -> None:
    verdict = verify(LOCAL, PeerFacts(outcome=HandshakeOutcome.WRONG_TOKEN, was_verified=True))
    assert verdict.bits == V.VERIFICATIONBIT_SECURITYTOKENCHANGED
    assert not verdict.verified and "changed" in verdict.reason


def test_other_build_is_wrongbuildid_naming_both_builds() -> None:
    verdict = verify(LOCAL, replace(GOOD, build_id="0.2.0+p1.0"))
    assert V.VERIFICATIONBIT_WRONGBUILDID in verdict.bits
    assert V.VERIFICATIONBIT_VERIFIED not in verdict.bits
    assert V.VERIFICATIONBIT_VERIFICATIONESTABLISHED in verdict.bits
    assert not verdict.verified
    assert "0.2.0+p1.0" in verdict.reason and "0.1.0+p1.0" in verdict.reason


def test_other_arch_is_wrongarchitecture_only_when_the_farm_requires_the_same() -> None:
    peer = replace(GOOD, arch="arm64")
    strict = verify(replace(LOCAL, require_same_arch=True), peer)
    assert V.VERIFICATIONBIT_WRONGARCHITECTURE in strict.bits
    assert not strict.verified and "arm64" in strict.reason
    lax = verify(LOCAL, peer)
    assert V.VERIFICATIONBIT_WRONGARCHITECTURE not in lax.bits and lax.verified


def test_key_other_than_the_pinned_one_is_failure_with_a_reason() -> None:
    verdict = verify(LOCAL, replace(GOOD, remote_static=b"\x02" * 32))
    assert V.VERIFICATIONBIT_FAILURE in verdict.bits
    assert V.VERIFICATIONBIT_VERIFIED not in verdict.bits
    assert not verdict.verified and "key" in verdict.reason


def test_no_capabilities_is_norendersupport() -> None:
    verdict = verify(LOCAL, replace(GOOD, capabilities=()))
    assert V.VERIFICATIONBIT_NORENDERSUPPORT in verdict.bits
    assert verdict.verified  # still a member of the farm, it just cannot render


def test_unreachable_is_remotenotreachable() -> None:
    verdict = verify(LOCAL, PeerFacts(outcome=HandshakeOutcome.UNREACHABLE))
    assert verdict.bits == V.VERIFICATIONBIT_REMOTENOTREACHABLE
    assert not verdict.verified and "connect" in verdict.reason


def test_peer_that_cannot_dial_us_is_thisnotreachable() -> None:
    verdict = verify(LOCAL, replace(GOOD, peer_cannot_dial_us=True))
    assert V.VERIFICATIONBIT_THISNOTREACHABLE in verdict.bits
    assert V.VERIFICATIONBIT_THISNOTREACHABLE not in verify(LOCAL, GOOD).bits


def test_handshake_in_flight_is_verifying() -> None:
    verdict = verify(LOCAL, PeerFacts(outcome=HandshakeOutcome.IN_PROGRESS))
    assert verdict.bits == V.VERIFICATIONBIT_VERIFYING and not verdict.verified


def test_other_handshake_failure_is_failure() -> None:
    verdict = verify(LOCAL, PeerFacts(outcome=HandshakeOutcome.FAILED))
    assert verdict.bits == V.VERIFICATIONBIT_FAILURE
    assert "handshake" in verdict.reason


def test_removing_is_removing_whatever_else_holds() -> None:
    assert V.VERIFICATIONBIT_REMOVING in verify(LOCAL, replace(GOOD, removing=True)).bits
    removing = verify(LOCAL, PeerFacts(outcome=HandshakeOutcome.NONE, removing=True))
    assert removing.bits == V.VERIFICATIONBIT_REMOVING


def test_offline_peer_has_no_online_bit() -> None:
    assert V.VERIFICATIONBIT_ONLINE not in verify(LOCAL, replace(GOOD, online=False)).bits


def test_handshake_done_but_no_hello_yet_is_not_verified_nor_established() -> None:
    verdict = verify(LOCAL, replace(GOOD, build_id=None))
    assert not verdict.verified and verdict.reason == "not verified yet"
    assert V.VERIFICATIONBIT_VERIFICATIONESTABLISHED not in verdict.bits
    assert V.VERIFICATIONBIT_ONLINE in verdict.bits


def test_nothing_known_yet_is_none() -> None:
    verdict = verify(LOCAL, PeerFacts(outcome=HandshakeOutcome.NONE))
    assert verdict.bits == V.VERIFICATIONBIT_NONE and not verdict.verified


peer_facts = st.builds(
    PeerFacts,
    outcome=st.sampled_from(HandshakeOutcome),
    online=st.booleans(),
    build_id=st.sampled_from([None, "0.1.0+p1.0", "other"]),
    arch=st.sampled_from([None, "x86_64", "arm64"]),
    capabilities=st.sampled_from([(), ("builtin",)]),
    sharing=st.booleans(),
    remote_static=st.sampled_from([None, KEY, b"\x02" * 32]),
    pinned_static=st.sampled_from([None, KEY]),
    was_verified=st.booleans(),
    peer_verified_us=st.booleans(),
    peer_cannot_dial_us=st.booleans(),
    removing=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(peer=peer_facts, require_same_arch=st.booleans())
def test_verdict_is_consistent_for_any_facts(peer: PeerFacts, require_same_arch: bool) -> None:
    local = replace(LOCAL, require_same_arch=require_same_arch)
    verdict = verify(local, peer)
    assert verify(local, peer) == verdict  # pure
    assert (V.VERIFICATIONBIT_VERIFIED in verdict.bits) == verdict.verified
    if verdict.verified:
        assert verdict.reason == "" and not verdict.bits & FAILURE_BITS
        assert peer.outcome is HandshakeOutcome.OK
    else:
        assert verdict.reason
    assert V.VERIFICATIONBIT_DEMONOTACTIVATED not in verdict.bits  # no licences here
    assert V.VERIFICATIONBIT_INITIALIZING not in verdict.bits  # local machine only
    assert not (V.VERIFICATIONBIT_WRONGSECURITYTOKEN in verdict.bits
                and V.VERIFICATIONBIT_SECURITYTOKENCHANGED in verdict.bits)


def test_bit_names_lists_set_bits_without_the_prefix() -> None:
    assert bit_names(V.VERIFICATIONBIT_ONLINE | V.VERIFICATIONBIT_VERIFIED) == ["ONLINE", "VERIFIED"]
    assert bit_names(0) == []


@pytest.mark.parametrize("bit", [m for m in VerificationBits if int(m)], ids=lambda m: m.name)
def test_every_bit_round_trips_through_its_name(bit: VerificationBits) -> None:
    names = bit_names(bit)
    assert len(names) == 1
    assert parse_bits(names) == bit
    assert parse_bits(names[0].lower()) == bit
    assert parse_bits("VERIFICATIONBIT_" + names[0]) == bit


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 17) - 1))
def test_any_set_of_bits_round_trips_through_names(value: int) -> None:
    names = bit_names(value)
    assert parse_bits(names) == value
    assert parse_bits(",".join(names)) == value


def test_parse_bits_accepts_spaces_case_and_none() -> None:
    assert parse_bits(" online , Verified ") == V.VERIFICATIONBIT_ONLINE | V.VERIFICATIONBIT_VERIFIED
    assert parse_bits("") == V.VERIFICATIONBIT_NONE
    assert parse_bits("NONE") == V.VERIFICATIONBIT_NONE
    assert parse_bits([]) == V.VERIFICATIONBIT_NONE


def test_unknown_bit_name_is_a_value_error_naming_it_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'BOGUS'") as err:
        parse_bits("ONLINE,BOGUS")
    assert "WRONGSECURITYTOKEN" in str(err.value)
