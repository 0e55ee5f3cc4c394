"""Every constant name of the seed (NetRenderService) exists in protocol, under
the seed's spelling, with no value shared by two names.  The names come from
parsing the seed itself so none is forgotten."""

from __future__ import annotations

import hashlib
import re
from enum import Enum, IntFlag
from pathlib import Path

import pytest

from protocol import enums
from protocol.verification import VerificationBits

HERE = Path(__file__).parent
VENDORED_SEED = HERE / "data" / "seed-netrenderservice.txt"
#: The shared reference beside the checkout (absent on a clean CI checkout).
SHARED_SEED = HERE.parents[2] / "shared" / "seed-netrenderservice.txt"
SEED_SHA256 = "1783119e8d3a3e896669a1cd102f0baa65530a7e954920cccb74de658201fa16"

ENUM_OF_PREFIX: dict[str, type[Enum]] = {
    "MACHINELIST": enums.MachineList,
    "DETAILSELECTOR": enums.DetailSelector,
    "RENDERJOBCREATOR": enums.RenderJobCreator,
    "CREATEJOBRESULT": enums.CreateJobResult,
    "RENDERRESULT": enums.RenderResult,
    "NETRENDERFLAGS": enums.NetRenderFlags,
    "OUTPUT": enums.Output,
    "THREADMODE": enums.ThreadMode,
    "VERIFICATIONBIT": VerificationBits,
}


def seed_names() -> dict[str, set[str]]:
    """Constant names in the seed, grouped by prefix."""
    text = VENDORED_SEED.read_text()
    prefixes = "|".join(ENUM_OF_PREFIX)
    found: dict[str, set[str]] = {p: set() for p in ENUM_OF_PREFIX}
    for name in re.findall(rf"\b((?:{prefixes})_[A-Z0-9_]+)\b", text):
        found[name.split("_", 1)[0]].add(name)
    return found


SEED = seed_names()


def test_seed_copy_is_the_reference() -> None:
    """The vendored copy is byte for byte the reference it was taken from (its
    SHA-256 pinned here), and equal to the shared one where a checkout has it."""
    data = VENDORED_SEED.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SEED_SHA256
    if SHARED_SEED.exists():
        assert data == SHARED_SEED.read_bytes()


def test_parser_finds_every_group_of_the_seed() -> None:
    counts = {prefix: len(names) for prefix, names in SEED.items()}
    assert counts == {
        "MACHINELIST": 3, "DETAILSELECTOR": 3, "RENDERJOBCREATOR": 6, "CREATEJOBRESULT": 5,
        "RENDERRESULT": 10, "NETRENDERFLAGS": 12, "OUTPUT": 5, "THREADMODE": 3,
        "VERIFICATIONBIT": 18,  # NONE and 17 bits
    }


def test_no_other_constant_group_in_the_seed_is_left_unmapped() -> None:
    groups = {m.split("_", 1)[0] for m in re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b",
                                                      VENDORED_SEED.read_text())}
    assert groups - set(ENUM_OF_PREFIX) <= {"WPREF"}  # a preference id, not an enum


@pytest.mark.parametrize("prefix", sorted(ENUM_OF_PREFIX))
def test_every_seed_name_exists_in_its_enum(prefix: str) -> None:
    cls = ENUM_OF_PREFIX[prefix]
    missing = SEED[prefix] - set(cls.__members__)
    assert not missing, f"{cls.__name__} lacks {sorted(missing)}"


@pytest.mark.parametrize("prefix", sorted(ENUM_OF_PREFIX))
def test_no_enum_invents_a_name_the_seed_lacks(prefix: str) -> None:
    cls = ENUM_OF_PREFIX[prefix]
    assert set(cls.__members__) - SEED[prefix] == set()


@pytest.mark.parametrize("prefix", sorted(ENUM_OF_PREFIX))
def test_no_two_names_share_a_wire_value(prefix: str) -> None:
    cls = ENUM_OF_PREFIX[prefix]
    members = cls.__members__
    if issubclass(cls, IntFlag):
        singles = {n: int(m) for n, m in members.items() if int(m) and int(m) & (int(m) - 1) == 0}
        assert len(set(singles.values())) == len(singles)
        composites = {n for n, m in members.items() if n not in singles and int(m)}
        assert composites <= {"MACHINELIST_ALL"}
    else:
        assert len({int(m.value) for m in members.values()}) == len(members)


def test_machinelist_all_is_online_or_offline() -> None:
    ml = enums.MachineList
    assert ml.MACHINELIST_ALL == ml.MACHINELIST_ONLINE | ml.MACHINELIST_OFFLINE


def test_verificationbit_none_is_zero_and_the_others_are_single_bits() -> None:
    assert int(VerificationBits.VERIFICATIONBIT_NONE) == 0
    bits = [int(m) for n, m in VerificationBits.__members__.items() if n != "VERIFICATIONBIT_NONE"]
    assert sorted(bits) == [1 << k for k in range(17)]


def test_flag_names_and_parse_flag_names_round_trip_for_seed_flags() -> None:
    flags = enums.NetRenderFlags
    value = flags.NETRENDERFLAGS_SHOWERRORS | flags.NETRENDERFLAGS_NOWRITETEST
    names = enums.flag_names(value, flags, "NETRENDERFLAGS_")
    assert names == ["SHOWERRORS", "NOWRITETEST"]
    assert enums.parse_flag_names(names, flags, "NETRENDERFLAGS_") == value
    assert enums.parse_flag_names("machinelist_online, OFFLINE", enums.MachineList,
                                  "MACHINELIST_") == enums.MachineList.MACHINELIST_ALL
