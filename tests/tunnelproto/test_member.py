"""The joining side: its API, and what it does when the host (or the path) misbehaves."""

from __future__ import annotations

import pytest
from harness import START, FakeHost, Net

from tunnelproto import (
    PROTOCOL_VERSION,
    ChatMessage,
    ConnectionEnded,
    JoinLink,
    LocalProtocolError,
    MemberConnection,
    MemberState,
    Refused,
    RemoteProtocolError,
    RoomEvent,
    SayRejected,
    TunnelEvent,
    Welcomed,
    _frames,
)
from tunnelproto._link import ticket_psk

LINK = JoinLink("https://h.example", "abcdefghijklmnop", bytes(range(32)))


def events(mc: MemberConnection) -> list[TunnelEvent]:
    out = []
    while (ev := mc.next_event()) is not None:
        out.append(ev)
    return out


def opened(**welcome: object) -> tuple[MemberConnection, FakeHost]:
    mc = MemberConnection(LINK, "ana", START)
    host = FakeHost(LINK)
    (msg1,) = mc.data_to_send()
    mc.receive_data(host.welcome(msg1, **welcome), START)
    assert mc.state is MemberState.OPEN
    (ack,) = mc.data_to_send()
    assert host.open(ack) == _frames.Ack(seq=0)  # key confirmation
    events(mc)
    return mc, host


def test_message_1_layout() -> None:
    mc = MemberConnection(LINK, "ana", START)
    (msg1,) = mc.data_to_send()
    assert msg1[0] == PROTOCOL_VERSION
    assert msg1[1:17] == LINK.invite_id
    assert LINK.secret not in msg1
    assert b"ana" not in msg1  # the hello is encrypted
    assert mc.data_to_send() == []


def test_api_misuse_is_a_local_protocol_error() -> None:
    mc = MemberConnection(LINK, "ana", START)
    with pytest.raises(LocalProtocolError) as info:
        mc.say("too early")
    assert info.value.code == "not-open"
    assert mc.resume_state() is None
    mc2, _ = opened()
    for bad in ("", "  ", "\n"):
        with pytest.raises(LocalProtocolError):
            mc2.say(bad)
    with pytest.raises(LocalProtocolError):
        mc2.say("x" * (32 * 1024 + 1))
    mc2.leave()
    with pytest.raises(LocalProtocolError):
        mc2.say("after leaving")


def test_unencodable_text_is_refused_locally_and_does_not_poison_resume() -> None:
    net = Net()
    ana = net.join("ana")
    with pytest.raises(LocalProtocolError):
        ana.mc.say("broken \ud800 surrogate")
    state = ana.mc.resume_state()
    assert state is not None and state.unacked == ()
    net.drop(ana)
    net.resume(ana)
    assert ana.is_open
    net.check()


def test_a_host_without_the_secret_cannot_complete_the_handshake() -> None:
    # The impostor knows some other secret (say, another invite): it can answer a message 1
    # made with that one, but that answer means nothing to our member.
    other = JoinLink(LINK.base_url, LINK.tunnel_id, bytes(32))
    (other_msg1,) = MemberConnection(other, "x", START).data_to_send()
    forged = FakeHost(other).welcome(other_msg1)
    mc = MemberConnection(LINK, "ana", START)
    mc.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        mc.receive_data(forged, START)
    assert "authenticate" in str(info.value)
    (end,) = events(mc)
    assert isinstance(end, ConnectionEnded) and end.resumable
    assert mc.state is MemberState.ERROR
    assert mc.goal is None  # nothing from the forged welcome was taken
    # Dead connections ignore further input rather than raising again.
    mc.receive_data(b"anything", START)
    assert events(mc) == []


def test_plaintext_refusal_is_reported() -> None:
    mc = MemberConnection(LINK, "ana", START)
    mc.data_to_send()
    mc.receive_data(b"\x01" + _frames.Refuse(code="unknown-invite", msg="no such").encode(), START)
    refused, end = events(mc)
    assert refused == Refused("unknown-invite", "no such")
    assert isinstance(end, ConnectionEnded) and not end.resumable
    assert mc.state is MemberState.CLOSED


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"\x02" + bytes(80),
        b"\x01" + _frames.Ping().encode(),  # plaintext that is not a refusal
        b"\x01\xff",
        b"\x00" + bytes(10),
        b"\x00" + bytes(100),
    ],
)
def test_bad_message_2(reply: bytes) -> None:
    mc = MemberConnection(LINK, "ana", START)
    mc.data_to_send()
    with pytest.raises(RemoteProtocolError):
        mc.receive_data(reply, START)
    assert mc.state is MemberState.ERROR


@pytest.mark.parametrize(
    "overrides",
    [
        {"ticket": bytes(31)},
        {"resumed": True},
    ],
)
def test_inconsistent_welcome_is_refused(overrides: dict[str, object]) -> None:
    mc = MemberConnection(LINK, "ana", START)
    (msg1,) = mc.data_to_send()
    with pytest.raises(RemoteProtocolError):
        mc.receive_data(FakeHost(LINK).welcome(msg1, **overrides), START)


def test_handshake_payload_must_be_welcome_or_refuse() -> None:
    mc = MemberConnection(LINK, "ana", START)
    (msg1,) = mc.data_to_send()
    reply = FakeHost(LINK).answer(msg1, _frames.Ping().encode())
    with pytest.raises(RemoteProtocolError, match="welcome or refuse"):
        mc.receive_data(reply, START)


def test_authenticated_refusal() -> None:
    mc = MemberConnection(LINK, "ana", START)
    (msg1,) = mc.data_to_send()
    mc.receive_data(
        FakeHost(LINK).answer(msg1, _frames.Refuse(code="used", msg="already used").encode()),
        START,
    )
    refused, end = events(mc)
    assert refused == Refused("used", "already used")
    assert isinstance(end, ConnectionEnded) and end.reason == "refused"


def test_welcome_then_messages_in_order() -> None:
    mc, host = opened()
    mc.receive_data(host.frame(_frames.Message(seq=1, ts=5, text="hi", ref=0, from_=1)), START)
    mc.receive_data(
        host.frame(_frames.Event(kind="joined", seq=2, ts=6, member=3, name="bo")), START
    )
    assert events(mc) == [
        ChatMessage(1, 1, 5, "hi"),
        RoomEvent(2, "joined", 6, member_id=3, name="bo"),
    ]
    (ack,) = mc.data_to_send()
    assert host.open(ack) == _frames.Ack(seq=2)  # one coalesced ack for both
    assert mc.data_to_send() == []


@pytest.mark.parametrize("seq", [0, 1, 3, 5])
def test_a_gap_or_duplicate_in_the_transcript_is_fatal(seq: int) -> None:
    mc, host = opened()
    mc.receive_data(host.frame(_frames.Message(seq=1, ts=5, text="hi", ref=0, from_=1)), START)
    events(mc)
    with pytest.raises(RemoteProtocolError) as info:
        mc.receive_data(host.frame(_frames.Message(seq=seq, ts=5, text="x", ref=0, from_=1)), START)
    assert info.value.code == "bad-seq"
    (end,) = events(mc)
    assert isinstance(end, ConnectionEnded) and end.resumable


@pytest.mark.parametrize(
    "frame",
    [
        _frames.Say(ref=1, text="rooms do not say"),
        _frames.Ack(seq=0),
        _frames.Hello(v=1, name="x", sw="y"),
        _frames.Refuse(code="used", msg="late"),
    ],
)
def test_frames_the_room_never_sends_are_fatal(frame: _frames.Frame) -> None:
    mc, host = opened()
    with pytest.raises(RemoteProtocolError, match="not allowed"):
        mc.receive_data(host.frame(frame), START)


def test_history_truncated_notice_must_move_forward() -> None:
    mc, host = opened(first=10, last=20)
    mc.receive_data(
        host.frame(_frames.Event(kind="history-truncated", seq=0, ts=1, first=10)), START
    )
    (notice,) = events(mc)
    assert notice == RoomEvent(0, "history-truncated", 1, first_seq=10)
    mc.receive_data(host.frame(_frames.Message(seq=10, ts=5, text="kept", ref=0, from_=1)), START)
    assert events(mc) == [ChatMessage(10, 1, 5, "kept")]
    with pytest.raises(RemoteProtocolError):
        mc.receive_data(
            host.frame(_frames.Event(kind="history-truncated", seq=0, ts=1, first=5)), START
        )


def test_error_frame_settles_the_say_it_names() -> None:
    mc, host = opened()
    ref = mc.say("too fast")
    mc.data_to_send()
    mc.receive_data(
        host.frame(_frames.Error(code="rate-limited", msg="slow down", ref=ref, retry=200)), START
    )
    assert events(mc) == [SayRejected(ref, "rate-limited", "slow down", 200)]
    state = mc.resume_state()
    assert state is not None and state.unacked == ()


def test_host_close_ends_the_connection_for_good() -> None:
    mc, host = opened()
    mc.receive_data(host.frame(_frames.Close(reason="closed", summary="done")), START)
    (end,) = events(mc)
    assert end == ConnectionEnded("closed", end.message, resumable=False, summary="done")  # type: ignore[union-attr]
    assert mc.next_deadline() is None


def test_member_answers_pings() -> None:
    mc, host = opened()
    mc.receive_data(host.frame(_frames.Ping()), START + 5)
    (pong,) = mc.data_to_send()
    assert host.open(pong) == _frames.Pong()
    # Traffic from the host pushes the keepalive deadline back.
    assert mc.next_deadline() == START + 5 + 20


def test_forged_reordered_or_replayed_room_messages_kill_the_member_connection() -> None:
    for mutate in ("swap", "replay", "flip", "truncate"):
        mc, host = opened()
        first = host.frame(_frames.Message(seq=1, ts=5, text="one", ref=0, from_=1))
        second = host.frame(_frames.Message(seq=2, ts=5, text="two", ref=0, from_=1))
        if mutate == "swap":
            sequence = [second, first]
        elif mutate == "replay":
            sequence = [first, first]
        elif mutate == "flip":
            sequence = [first[:-1] + bytes([first[-1] ^ 1])]
        else:
            sequence = [first[:-3]]
        with pytest.raises(RemoteProtocolError) as info:
            for data in sequence:
                mc.receive_data(data, START)
        assert info.value.code == "decrypt", mutate
        assert mc.state is MemberState.ERROR


def test_leave_during_handshake_sends_nothing_more() -> None:
    mc = MemberConnection(LINK, "ana", START)
    mc.data_to_send()
    mc.leave()
    (end,) = events(mc)
    assert isinstance(end, ConnectionEnded) and end.reason == "left"
    assert mc.data_to_send() == []


def test_resumed_welcome_must_match_the_seat() -> None:
    net = Net()
    ana = net.join("ana")
    state = ana.mc.resume_state()
    assert state is not None
    mc = MemberConnection(ana.link, "ana", START, resume=state)
    (msg1,) = mc.data_to_send()
    assert msg1[1:17] != ana.link.invite_id  # a resume names its ticket, not the invite
    from tunnelproto._link import ticket_id

    assert msg1[1:17] == ticket_id(state.ticket, ana.link.tunnel_id)
    host = FakeHost(ana.link)
    reply = host.answer(
        msg1,
        _frames.Welcome(
            goal="g",
            you=99,
            name="ana",
            roster=(),
            last=5,
            first=1,
            ticket=bytes(32),
            resumed=True,
            limits={},
        ).encode(),
        psk=ticket_psk(state.ticket, ana.link.tunnel_id),
    )
    with pytest.raises(RemoteProtocolError, match="seat"):
        mc.receive_data(reply, START)


def test_welcomed_event_fields() -> None:
    mc = MemberConnection(LINK, "ana", START)
    (msg1,) = mc.data_to_send()
    mc.receive_data(FakeHost(LINK).welcome(msg1, name="ana (2)", goal="G"), START)
    (welcome,) = events(mc)
    assert isinstance(welcome, Welcomed)
    assert (welcome.name, welcome.goal, welcome.member_id, welcome.resumed) == (
        "ana (2)",
        "G",
        2,
        False,
    )
    assert mc.name == "ana (2)"


def test_a_connection_level_error_is_kept_for_the_drop_report() -> None:
    mc, host = opened()
    mc.receive_data(
        host.frame(_frames.Error(code="slow-consumer", msg="you stopped reading")), START
    )
    assert events(mc) == []
    mc.connection_lost(START + 1)
    (end,) = events(mc)
    assert isinstance(end, ConnectionEnded) and end.resumable
    assert "slow-consumer" in end.message and "you stopped reading" in end.message


def test_hello_stays_bounded() -> None:
    with pytest.raises(LocalProtocolError):
        MemberConnection(LINK, "ana", START, caps=tuple(f"cap{i}" for i in range(9)))
    with pytest.raises(LocalProtocolError):
        MemberConnection(LINK, "ana", START, caps=("x" * 33,))
    # The largest hello the API allows still fits handshake message 1.
    mc = MemberConnection(
        LINK, "\U0001f600" * 500, START, caps=tuple("\U0001f600" * 32 for _ in range(8))
    )
    (msg1,) = mc.data_to_send()
    from tunnelproto._channel import MAX_MSG1

    assert len(msg1) <= MAX_MSG1
