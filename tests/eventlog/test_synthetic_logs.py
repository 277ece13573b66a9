"""Hand-built and mutated logs: replay corner cases, and attacks on the parser.

The builder below writes the TCG structures from the specification, not from
the parser, so a misreading in the parser cannot hide in the tests. Every
malformed log must end in ``EventLogError`` (naming the byte offset and event
index), never in another exception and never in a silently different parse.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet import eventlog
from fleet.errors import GpuwardError
from fleet.eventlog import (
    FORMAT_CRYPTO_AGILE,
    MAX_EVENT_DATA,
    MAX_LOG_BYTES,
    EventLogError,
    NoAction,
    StartupLocality,
    parse,
    replay,
)

LOG_DIR = Path(__file__).resolve().parents[3] / "shared/testdata/eventlogs"
REAL_LOGS = {p.stem: p.read_bytes() for p in sorted(LOG_DIR.glob("*.bin"))}

SHA1, SHA256, SHA384 = 0x0004, 0x000B, 0x000C
EV_NO_ACTION, EV_SEPARATOR, EV_IPL = 0x3, 0x4, 0xD
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_HCRTM_EVENT = 0x80000010
SIZES = {SHA1: 20, SHA256: 32, SHA384: 48}
NAMES = {SHA1: "sha1", SHA256: "sha256", SHA384: "sha384"}


def spec_id_event(algorithms: list[tuple[int, int]], vendor: bytes = b"") -> bytes:
    body = (
        b"Spec ID Event03\x00"
        + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algorithms))
        + b"".join(struct.pack("<HH", alg, size) for alg, size in algorithms)
        + bytes([len(vendor)])
        + vendor
    )
    return legacy_event(0, EV_NO_ACTION, bytes(20), body)


def legacy_event(pcr: int, event_type: int, digest: bytes, data: bytes) -> bytes:
    return struct.pack("<II20sI", pcr, event_type, digest, len(data)) + data


def event2(pcr: int, event_type: int, digests: list[tuple[int, bytes]], data: bytes) -> bytes:
    return (
        struct.pack("<III", pcr, event_type, len(digests))
        + b"".join(struct.pack("<H", alg) + digest for alg, digest in digests)
        + struct.pack("<I", len(data))
        + data
    )


def measured(data: bytes, algorithms: tuple[int, ...] = (SHA256,)) -> list[tuple[int, bytes]]:
    return [(alg, hashlib.new(NAMES[alg], data).digest()) for alg in algorithms]


def agile_log(*events: bytes, algorithms: tuple[int, ...] = (SHA256,)) -> bytes:
    return spec_id_event([(a, SIZES[a]) for a in algorithms]) + b"".join(events)


def extend(value: bytes, digest: bytes, name: str = "sha256") -> bytes:
    return hashlib.new(name, value + digest).digest()


SEPARATOR = b"\x00\x00\x00\x00"
STARTUP_LOCALITY_3 = b"StartupLocality\x00\x03"


# Replay semantics that the real logs here do not exercise.


def test_startup_locality_3_starts_pcr0_at_3() -> None:
    log = parse(
        agile_log(
            event2(0, EV_NO_ACTION, [(SHA256, bytes(32))], STARTUP_LOCALITY_3),
            event2(0, EV_SEPARATOR, measured(SEPARATOR), SEPARATOR),
        )
    )
    assert log.events[1].decoded == StartupLocality(3)
    start = bytes(31) + b"\x03"
    assert replay(log) == {"sha256": {0: extend(start, hashlib.sha256(SEPARATOR).digest())}}


def test_startup_locality_in_every_bank_the_event_names() -> None:
    algorithms = (SHA1, SHA256)
    log = parse(
        agile_log(
            event2(0, EV_NO_ACTION, [(a, bytes(SIZES[a])) for a in algorithms], STARTUP_LOCALITY_3),
            algorithms=algorithms,
        )
    )
    # Not extended, but listed: tpm2_eventlog marks PCR 0 as used.
    assert replay(log) == {"sha1": {0: bytes(19) + b"\x03"}, "sha256": {0: bytes(31) + b"\x03"}}


def test_startup_locality_0_changes_nothing() -> None:
    log = parse(
        agile_log(
            event2(0, EV_NO_ACTION, [(SHA256, bytes(32))], b"StartupLocality\x00\x00"),
            event2(0, EV_SEPARATOR, measured(SEPARATOR), SEPARATOR),
        )
    )
    assert replay(log) == {"sha256": {0: extend(bytes(32), hashlib.sha256(SEPARATOR).digest())}}


def test_hcrtm_sets_pcr0_to_4_and_overrides_a_later_locality() -> None:
    hcrtm = measured(b"HCRTM")
    log = parse(
        agile_log(
            event2(0, EV_EFI_HCRTM_EVENT, hcrtm, b"HCRTM"),
            event2(0, EV_NO_ACTION, [(SHA256, bytes(32))], STARTUP_LOCALITY_3),
        )
    )
    assert replay(log) == {"sha256": {0: extend(bytes(31) + b"\x04", hcrtm[0][1])}}


def test_no_action_events_are_not_extended_but_listed_in_agile_logs() -> None:
    log = parse(
        agile_log(
            event2(5, EV_NO_ACTION, [(SHA256, b"\x11" * 32)], b"SP800-155 Event\x00rest"),
        )
    )
    assert log.events[1].decoded == NoAction("SP800-155 Event")
    assert replay(log) == {"sha256": {5: bytes(32)}}


def test_legacy_log_skips_no_action_events_entirely() -> None:
    digest = hashlib.sha1(SEPARATOR).digest()
    log = parse(
        legacy_event(0, EV_SEPARATOR, digest, SEPARATOR)
        + legacy_event(3, EV_NO_ACTION, b"\x22" * 20, b"anything")
    )
    assert replay(log) == {"sha1": {0: extend(bytes(20), digest, "sha1")}}


def test_legacy_log_opening_with_an_older_spec_id_stays_legacy() -> None:
    digest = hashlib.sha1(SEPARATOR).digest()
    log = parse(
        legacy_event(0, EV_NO_ACTION, bytes(20), b"Spec ID Event00\x00" + bytes(8))
        + legacy_event(1, EV_SEPARATOR, digest, SEPARATOR)
    )
    assert log.format == eventlog.FORMAT_SHA1
    assert replay(log) == {"sha1": {1: extend(bytes(20), digest, "sha1")}}


def test_events_may_carry_fewer_digests_than_banks() -> None:
    log = parse(
        agile_log(
            event2(4, EV_SEPARATOR, measured(SEPARATOR, (SHA256,)), SEPARATOR),
            algorithms=(SHA1, SHA256),
        )
    )
    assert replay(log) == {"sha256": {4: extend(bytes(32), hashlib.sha256(SEPARATOR).digest())}}


def test_a_declared_unknown_algorithm_is_parsed_and_left_out_of_the_replay() -> None:
    log = parse(
        spec_id_event([(SHA256, 32), (0x1234, 24)])
        + event2(1, EV_SEPARATOR, [*measured(SEPARATOR), (0x1234, b"\x01" * 24)], SEPARATOR)
    )
    assert dict(log.digest_sizes) == {"sha256": 32, "0x1234": 24}
    assert log.events[1].digests["0x1234"] == b"\x01" * 24
    assert set(replay(log)) == {"sha256"}


def test_sha384_and_pcr_order() -> None:
    log = parse(
        agile_log(
            event2(9, EV_IPL, measured(b"b", (SHA384,)), b"b\x00"),
            event2(2, EV_IPL, measured(b"a", (SHA384,)), b"a\x00"),
            algorithms=(SHA384,),
        )
    )
    pcrs = replay(log)
    assert list(pcrs["sha384"]) == [2, 9]
    assert pcrs["sha384"][2] == extend(bytes(48), hashlib.sha384(b"a").digest(), "sha384")


def _file_node(path: str) -> bytes:
    text = (path + "\x00").encode("utf-16-le")
    return struct.pack("<BBH", 4, 4, 4 + len(text)) + text


END_NODE = struct.pack("<BBH", 0x7F, 0xFF, 4)


@pytest.mark.parametrize(
    ("device_path", "file_path"),
    [
        (
            _file_node("\\EFI\\BOOT") + _file_node("\\BOOTX64.EFI") + END_NODE,
            "\\EFI\\BOOT\\BOOTX64.EFI",
        ),
        (b"", None),
        (END_NODE + _file_node("\\after-the-end"), None),
        (struct.pack("<BBH", 4, 4, 2) + bytes(8), None),  # node shorter than its header
        (struct.pack("<BBH", 4, 4, 400) + bytes(8), None),  # node longer than the path
        (struct.pack("<BBH", 4, 4, 6) + b"\x00\xd8", None),  # not UTF-16
    ],
)
def test_image_file_path_is_best_effort(device_path: bytes, file_path: str | None) -> None:
    data = struct.pack("<QQQQ", 0x1000, 4096, 0, len(device_path)) + device_path
    log = parse(agile_log(event2(4, EV_EFI_BOOT_SERVICES_APPLICATION, measured(data), data)))
    image = log.events[1].decoded
    assert isinstance(image, eventlog.ImageLoad)
    assert image.file_path == file_path


# Attacks: every one must end in EventLogError.


def _rejects(data: bytes, message: str) -> EventLogError:
    with pytest.raises(EventLogError, match=message) as caught:
        parse(data)
    return caught.value


GOOD = agile_log(
    event2(0, EV_SEPARATOR, measured(SEPARATOR), SEPARATOR),
    event2(7, EV_SEPARATOR, measured(SEPARATOR), SEPARATOR),
)
FIRST = len(spec_id_event([(SHA256, 32)]))  # offset of event 1
SECOND = FIRST + len(event2(0, EV_SEPARATOR, measured(SEPARATOR), SEPARATOR))


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


def test_the_good_log_parses() -> None:
    assert [e.offset for e in parse(GOOD).events] == [0, FIRST, SECOND]


def test_empty() -> None:
    _rejects(b"", "empty")


@pytest.mark.parametrize("name", sorted(REAL_LOGS))
def test_every_truncation_is_an_error_unless_it_falls_between_events(name: str) -> None:
    data = REAL_LOGS[name]
    boundaries = {e.offset: e.index for e in parse(data).events[1:]}
    # Every prefix of the small logs, a prime stride through the large ones.
    stride = 1 if len(data) < 4_000 else 31
    for length in range(0, len(data), stride):
        if length in boundaries:
            assert len(parse(data[:length]).events) == boundaries[length]
            continue
        with pytest.raises(EventLogError) as caught:
            parse(data[:length])
        assert caught.value.offset <= length


def test_error_names_offset_and_index() -> None:
    error = _rejects(GOOD[:-2], "the event data needs 4 bytes but 2 remain")
    data_at = SECOND + 12 + 2 + 32 + 4  # header, one sha256 digest, event size
    assert (error.offset, error.index) == (data_at, 2)
    assert f"byte {data_at} (event 2)" in str(error)
    assert isinstance(error, GpuwardError)


@pytest.mark.parametrize("seed", range(20))
def test_garbage(seed: int) -> None:
    rng = random.Random(seed)
    with pytest.raises(EventLogError):
        parse(rng.randbytes(rng.randrange(1, 4096)))


@pytest.mark.parametrize("filler", [b"\xff", b"\x00"])
def test_garbage_after_a_valid_header(filler: bytes) -> None:
    with pytest.raises(EventLogError):
        parse(spec_id_event([(SHA256, 32)]) + filler * 1000)


def test_event_size_2_32_minus_1() -> None:
    error = _rejects(_patch(GOOD, SECOND - 8, "<I", 0xFFFFFFFF), "event size 4294967295 exceeds")
    assert error.index == 1


def test_spec_id_event_size_2_32_minus_1() -> None:
    _rejects(_patch(GOOD, 28, "<I", 0xFFFFFFFF), "exceeds")


def test_event_data_over_the_limit_even_when_present() -> None:
    big = b"\x00" * (MAX_EVENT_DATA + 1)
    _rejects(agile_log(event2(1, EV_IPL, measured(big), big)), f"exceeds {MAX_EVENT_DATA}")


def test_log_over_the_limit() -> None:
    _rejects(bytes(MAX_LOG_BYTES + 1), "over")


@pytest.mark.parametrize("count", [2, 0xFFFF, 0xFFFFFFFF])
def test_digest_count_beyond_the_declared_algorithms(count: int) -> None:
    _rejects(_patch(GOOD, FIRST + 8, "<I", count), f"digest count {count} exceeds the 1")


def test_undeclared_algorithm() -> None:
    _rejects(_patch(GOOD, FIRST + 12, "<H", 0x1234), "algorithm 0x1234 is not declared")


def test_known_but_undeclared_algorithm() -> None:
    _rejects(agile_log(event2(1, EV_SEPARATOR, measured(SEPARATOR, (SHA1,)), SEPARATOR)), "0x0004")


def test_two_digests_of_one_bank() -> None:
    twice = measured(SEPARATOR) * 2
    _rejects(
        agile_log(event2(1, EV_SEPARATOR, twice, SEPARATOR), algorithms=(SHA1, SHA256)),
        "two sha256 digests",
    )


def test_pcr_index_out_of_range() -> None:
    _rejects(_patch(GOOD, SECOND, "<I", 32), "PCR index 32")
    _rejects(legacy_event(0xFFFFFFFF, EV_SEPARATOR, bytes(20), SEPARATOR), "PCR index 4294967295")


def test_too_many_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "MAX_EVENTS", 2)
    _rejects(GOOD, "more than 2 events")


@pytest.mark.parametrize(
    ("algorithms", "message"),
    [
        ([], "declares 0 algorithms"),
        ([(SHA256, 20)], "gives sha256 20 bytes, not 32"),
        ([(SHA256, 32), (SHA256, 32)], "declares sha256 twice"),
        ([(0x1234, 0)], "gives 0x1234 0 bytes"),
        ([(0x1234, 65)], "gives 0x1234 65 bytes"),
    ],
)
def test_bad_spec_id(algorithms: list[tuple[int, int]], message: str) -> None:
    _rejects(spec_id_event(algorithms), message)


def test_spec_id_vendor_size_disagrees_with_event_size() -> None:
    header = bytearray(spec_id_event([(SHA256, 32)], vendor=b"ab"))
    header[-3] = 3  # vendorInfoSize claims one byte more than the event holds
    _rejects(bytes(header), "fields take")


def test_spec_id_with_too_many_algorithms_for_its_size() -> None:
    _rejects(_patch(spec_id_event([(SHA256, 32)]), 32 + 24, "<I", 3), "too short for 3")


def test_spec_id_outside_pcr0() -> None:
    _rejects(_patch(GOOD, 0, "<I", 1), "PCR 0 with a zero digest")


@pytest.mark.parametrize(
    ("event_type", "data", "message"),
    [
        (EV_EFI_VARIABLE_DRIVER_CONFIG, bytes(31), "UEFI variable data is only 31"),
        (
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            bytes(16) + struct.pack("<QQ", 2**63, 0),
            "overrun",
        ),
        (
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            bytes(16) + struct.pack("<QQ", 1, 0) + b"\x00\xd8",
            "not valid UTF-16",
        ),
        (EV_EFI_BOOT_SERVICES_APPLICATION, bytes(24), "image load data is only 24"),
        (
            EV_EFI_BOOT_SERVICES_APPLICATION,
            struct.pack("<QQQQ", 0, 0, 0, 2**64 - 1),
            "device path",
        ),
        (EV_EFI_HCRTM_EVENT, b"HCRTX", "HCRTM"),
        (0x80000008, bytes(15), "firmware blob data is only 15"),
        (EV_NO_ACTION, b"StartupLocality\x00", "StartupLocality data is 16 bytes"),
        (EV_NO_ACTION, b"StartupLocality\x00\x09", "StartupLocality 9"),
    ],
)
def test_malformed_event_data(event_type: int, data: bytes, message: str) -> None:
    error = _rejects(agile_log(event2(1, event_type, measured(data), data)), message)
    assert (error.offset, error.index) == (FIRST, 1)


# Fuzzing: real logs, mutated. Bounded so that it runs in seconds in CI.

_INTERESTING = [0, 1, 2, 3, 0x20, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


@st.composite
def mutated_logs(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(sorted(REAL_LOGS.values()))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        match draw(st.sampled_from(["byte", "u32", "cut", "insert", "delete"])):
            case "byte":
                data[at] = draw(st.integers(0, 255))
            case "u32":
                value = draw(st.sampled_from(_INTERESTING) | st.integers(0, 2**32 - 1))
                data[at : at + 4] = value.to_bytes(4, "little")
            case "cut":
                del data[at:]
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
            case "delete":
                del data[at : at + draw(st.integers(1, 64))]
        if not data:
            break
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_logs())
def test_fuzz_mutated_real_logs(data: bytes) -> None:
    try:
        log = parse(data)
    except EventLogError as error:
        assert 0 <= error.offset <= len(data)
        return
    pcrs = replay(log)
    assert set(pcrs) <= set(log.digest_sizes)
    assert log.format == FORMAT_CRYPTO_AGILE or set(pcrs) <= {"sha1"}
    log.to_dict()
    for event in log.events:
        if event.decoded is not None:
            event.decoded.summary()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_after_a_spec_id_header(tail: bytes) -> None:
    # Anything but EventLogError escaping fails the test.
    with contextlib.suppress(EventLogError):
        parse(spec_id_event([(SHA1, 20), (SHA256, 32)]) + tail)
