"""DNS-over-HTTPS client: against local trustme-certified resolvers, and the decoder fuzzed."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import trio
import trustme
from _servers import client_ssl_context, closed_port, dns_answer, run_doh_server
from hypothesis import given
from hypothesis import strategies as st

from tunnel_trio._doh import (
    DEFAULT_RESOLVERS,
    DohClient,
    DohError,
    decode_response,
    doh_enabled,
    encode_query,
    resolve_fallback,
    resolvers_from_env,
)
from tunnel_trio._tls import client_ssl_context as product_ssl_context

NAME = "calm-river-stone-dance.trycloudflare.com"


async def test_resolve_returns_the_addresses(nursery: trio.Nursery, ca: trustme.CA) -> None:
    server = await run_doh_server(nursery, ca, {NAME: ["192.0.2.7", "192.0.2.8", "2001:db8::7"]})
    client = DohClient([server.url], ssl_context=client_ssl_context(ca))
    assert await client.resolve(NAME) == ["192.0.2.7", "192.0.2.8"]
    assert await client.resolve(NAME.upper() + ".", qtype="AAAA") == ["2001:db8::7"]


async def test_nxdomain_and_nodata_are_empty(nursery: trio.Nursery, ca: trustme.CA) -> None:
    server = await run_doh_server(nursery, ca, {NAME: ["192.0.2.7"]})
    client = DohClient([server.url], ssl_context=client_ssl_context(ca))
    assert await client.resolve("no-such-name.trycloudflare.com") == []
    assert await client.resolve(NAME, qtype="AAAA") == []


async def test_a_dead_resolver_falls_back_to_the_next(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    server = await run_doh_server(nursery, ca, {NAME: ["192.0.2.7"]})
    dead = f"https://127.0.0.1:{closed_port()}/dns-query"
    client = DohClient([dead, server.url], ssl_context=client_ssl_context(ca))
    assert await client.resolve(NAME) == ["192.0.2.7"]


async def test_a_silent_resolver_times_out_and_the_next_answers(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    silent = await run_doh_server(nursery, ca, {}, mode="hang")
    good = await run_doh_server(nursery, ca, {NAME: ["192.0.2.7"]})
    client = DohClient([silent.url, good.url], ssl_context=client_ssl_context(ca), timeout=1.0)
    assert await client.resolve(NAME) == ["192.0.2.7"]
    assert silent.queries == 1


async def test_when_every_resolver_fails_the_error_says_why_for_each(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    silent = await run_doh_server(nursery, ca, {}, mode="hang")
    dead_port = closed_port()
    client = DohClient(
        [silent.url, f"https://127.0.0.1:{dead_port}/dns-query"],
        ssl_context=client_ssl_context(ca),
        timeout=1.0,
    )
    with pytest.raises(DohError) as caught:
        await client.resolve(NAME)
    message = str(caught.value)
    assert message.startswith("DNS-over-HTTPS failed: ")
    assert f"{silent.url.split('/')[2]}: timed out" in message
    assert f"127.0.0.1:{dead_port}: cannot connect" in message
    assert "TUNNEL_DOH_RESOLVERS" in message


@pytest.mark.parametrize("mode", ["garbage", "http-error"])
async def test_a_broken_answer_is_a_doh_error(
    nursery: trio.Nursery, ca: trustme.CA, mode: str
) -> None:
    server = await run_doh_server(nursery, ca, {NAME: ["192.0.2.7"]}, mode=mode)
    client = DohClient([server.url], ssl_context=client_ssl_context(ca))
    with pytest.raises(DohError, match="HTTP 500" if mode == "http-error" else "malformed"):
        await client.resolve(NAME)


async def test_a_resolver_with_an_untrusted_certificate_is_refused(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    server = await run_doh_server(nursery, ca, {NAME: ["192.0.2.7"]})
    client = DohClient([server.url], ssl_context=client_ssl_context(trustme.CA()))
    with pytest.raises(DohError, match="certificate verification failed"):
        await client.resolve(NAME)
    assert server.names == []  # the query never reached it


async def test_environment_configures_resolvers_and_ca(
    nursery: trio.Nursery, ca: trustme.CA, ca_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await run_doh_server(nursery, ca, {NAME: ["192.0.2.7"]})
    monkeypatch.setenv("TUNNEL_DOH_RESOLVERS", f" {server.url} ,")
    monkeypatch.setenv("TUNNEL_CA_BUNDLE", str(ca_bundle))
    assert await DohClient().resolve(NAME) == ["192.0.2.7"]


async def test_resolve_fallback_tries_aaaa_when_there_is_no_a(
    nursery: trio.Nursery, ca: trustme.CA, ca_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await run_doh_server(nursery, ca, {NAME: ["2001:db8::9"], "v4.example": ["192.0.2.1"]})
    monkeypatch.setenv("TUNNEL_DOH_RESOLVERS", server.url)
    monkeypatch.setenv("TUNNEL_CA_BUNDLE", str(ca_bundle))
    assert await resolve_fallback(NAME) == ["2001:db8::9"]
    assert await resolve_fallback("v4.example") == ["192.0.2.1"]
    assert await resolve_fallback("missing.example") == []


async def test_tunnel_doh_off_disables_resolve_fallback(
    nursery: trio.Nursery, ca: trustme.CA, ca_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await run_doh_server(nursery, ca, {NAME: ["192.0.2.7"]})
    monkeypatch.setenv("TUNNEL_DOH_RESOLVERS", server.url)
    monkeypatch.setenv("TUNNEL_CA_BUNDLE", str(ca_bundle))
    monkeypatch.setenv("TUNNEL_DOH", "Off")
    assert await resolve_fallback(NAME) == []
    assert server.queries == 0


@pytest.mark.parametrize(
    ("value", "enabled"),
    [
        ("", True),
        ("on", True),
        ("1", True),
        ("off", False),
        ("0", False),
        ("FALSE", False),
        (" no ", False),
    ],
)
def test_doh_enabled(value: str, enabled: bool) -> None:
    assert doh_enabled({"TUNNEL_DOH": value}) is enabled
    assert doh_enabled({}) is True


def test_resolver_list_from_the_environment() -> None:
    assert resolvers_from_env({}) == DEFAULT_RESOLVERS
    assert resolvers_from_env({"TUNNEL_DOH_RESOLVERS": ""}) == DEFAULT_RESOLVERS
    assert resolvers_from_env(
        {"TUNNEL_DOH_RESOLVERS": "https://a.example/dns-query,https://9.9.9.9/dns-query"}
    ) == ("https://a.example/dns-query", "https://9.9.9.9/dns-query")
    with pytest.raises(ValueError, match="TUNNEL_DOH_RESOLVERS.*https"):
        resolvers_from_env({"TUNNEL_DOH_RESOLVERS": "http://1.1.1.1/dns-query"})


def test_an_unreadable_ca_bundle_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TUNNEL_CA_BUNDLE.*missing.pem"):
        product_ssl_context({"TUNNEL_CA_BUNDLE": str(tmp_path / "missing.pem")})


async def test_ip_literals_and_invalid_names() -> None:
    client = DohClient(["https://127.0.0.1:1/dns-query"])
    assert await client.resolve("192.0.2.1") == ["192.0.2.1"]
    assert await client.resolve("192.0.2.1", qtype="AAAA") == []
    with pytest.raises(ValueError, match="not a valid DNS name"):
        await client.resolve("a..b")
    with pytest.raises(ValueError, match="A or AAAA"):
        await client.resolve("example.com", qtype="MX")


# --- the wire format ---------------------------------------------------------------------------


def test_query_wire_format() -> None:
    # RFC 8484 section 4.1: ID 0; RD set; one IN question.
    assert encode_query("Example.COM") == (
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    )
    assert encode_query("example.com", "AAAA")[-4:] == b"\x00\x1c\x00\x01"


def _response(query: bytes, answers: bytes, count: int, flags: int = 0x8180) -> bytes:
    question = query[12:]
    return struct.pack("!HHHHHH", 0, flags, 1, count, 0, 0) + question + answers


def test_cname_chains_are_followed_and_unrelated_records_ignored() -> None:
    query = encode_query("www.example.com")
    # www.example.com CNAME edge.example.net; edge.example.net A 192.0.2.5; other A 192.0.2.66
    question_end = len(query)
    cname_rdata = b"\x04edge\x07example\x03net\x00"
    answers = struct.pack("!HHHIH", 0xC00C, 5, 1, 60, len(cname_rdata)) + cname_rdata
    edge_offset = question_end + 12
    answers += struct.pack("!HHHIH", 0xC000 | edge_offset, 1, 1, 60, 4) + bytes([192, 0, 2, 5])
    answers += struct.pack("!HHHIH", 0xC000 | (edge_offset + 5), 1, 1, 60, 4) + bytes(
        [192, 0, 2, 66]
    )
    message = _response(query, answers, 3)
    assert decode_response(message, hostname="www.example.com") == ["192.0.2.5"]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda m: m[:-2], "truncated"),
        (lambda m: m[:2] + b"\x01\x80" + m[4:], "not a response"),
        (lambda m: b"\x12\x34" + m[2:], "ID does not match"),
        (lambda m: m[:2] + b"\x83\x80" + m[4:], "truncated"),
        (lambda m: m[:2] + b"\x81\x82" + m[4:], "SERVFAIL"),
        (lambda m: m[:2] + b"\x81\x85" + m[4:], "REFUSED"),
        (lambda m: m.replace(b"\x07example", b"\x07exbmple", 1), "different question"),
        (lambda m: m[:-6] + b"\x00\x03" + m[-4:], "not 4 bytes"),
    ],
)
def test_malformed_responses_are_rejected(mutate: object, error: str) -> None:
    query = encode_query("example.com")
    good = dns_answer(query, ["192.0.2.1"])
    assert decode_response(good, hostname="example.com") == ["192.0.2.1"]
    assert callable(mutate)
    with pytest.raises(DohError, match=error):
        decode_response(mutate(good), hostname="example.com")


def test_compression_pointer_loops_are_rejected() -> None:
    query = encode_query("example.com")
    # An answer whose owner name is a pointer to itself, then one pointing forwards.
    for pointer_target in (len(query), len(query) + 20):
        answer = struct.pack("!HHHIH", 0xC000 | pointer_target, 1, 1, 60, 4) + b"\x01\x02\x03\x04"
        with pytest.raises(DohError, match="compression pointer"):
            decode_response(_response(query, answer, 1), hostname="example.com")


@given(st.binary(max_size=600))
def test_decoder_on_arbitrary_bytes_raises_only_doh_error(data: bytes) -> None:
    try:
        result = decode_response(data, hostname="example.com")
    except DohError:
        return
    assert isinstance(result, list)


_VALID = dns_answer(encode_query("example.com"), ["192.0.2.1", "192.0.2.2"])


@given(
    st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(_VALID)),
)
def test_decoder_on_corrupted_answers_raises_only_doh_error(
    edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(_VALID)
    for offset, value in edits:
        data[offset] = value
    try:
        result = decode_response(bytes(data[:cut]), hostname="example.com")
    except DohError:
        return
    assert all(isinstance(address, str) for address in result)
