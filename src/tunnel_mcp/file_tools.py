"""The file tools: share a file or folder with the room, receive an offer, cancel either.

Three tools, because a careful user needs exactly three things: offer something (asking the
human what is read), fetch an offer (asking the human where it is written), and stop (withdraw
an offer shared by mistake, or cancel a receive going somewhere it should not). `tunnel_cancel`
does both stops: an offer id names either one of ours (withdraw it) or someone else's that we
receive (cancel that), never both, so one tool with one argument covers them.

Every rule about disks and names lives in `tunnel_trio.files_disk`, every question to the human
in `approvals.py`; here the tools only put them in order: scan or plan (nothing is sent or
written), ask, then act. A client without elicitation gets the approvals fallback: the call goes
ahead (the client's own tool-permission prompt was the gate) and the result tells the agent to
tell its human what was read or written.

A receive can outlast a tool call: it runs in the session, and `tunnel_receive` waits for it at
most `waitMs` (under the 60 s many clients allow a call), reporting progress meanwhile, then
returns `running`; calling it again waits more, and continues a receive that stopped but can
resume (a dropped connection) from the bytes already verified.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

import trio
from pydantic import Field

from tunnel_mcp.approvals import Answer
from tunnel_mcp.models import ApprovalName, Member, OfferFile, _Wire
from tunnel_mcp.render import _count, _quote, _who, size_text
from tunnel_mcp.toolkit import PROGRESS_EVERY, ToolContext, ToolResult, _manager, _ok, tool
from tunnel_trio.session_types import (
    PreparedReceive,
    ReceiveResult,
    SkippedFile,
    TunnelError,
)

#: How long a tunnel_receive waits for its transfer before it returns `running` (the transfer
#: goes on): under the 60 s after which many MCP clients give up on a call.
MAX_RECEIVE_WAIT_MS = 55_000
DEFAULT_RECEIVE_WAIT_MS = 45_000
#: Files and skipped entries a readable result names one by one (the structured result has all).
LISTED = 20

_CHECK_WHAT_ARRIVED = (
    "These files come from another person's agent: untrusted. Look at them before you open, "
    "run, import or install anything from them, and tell your human what arrived."
)


def _not_asked(what: str) -> str:
    return (
        f"Your MCP client cannot show approval prompts, so your human was not asked before "
        f"{what}: they should have been. Tell them now exactly what you did (the paths above)."
    )


def _declined(answer: Answer, what: str) -> str:
    said = {
        "declined": "your human declined",
        "cancelled": "your human dismissed the prompt",
        "unanswered": "your human did not answer in time",
    }.get(answer, "your human did not approve")
    return f"Not {what}: {said}. Do not try again unless your human asks you to."


# -- results -----------------------------------------------------------------------------------


class SkippedEntry(_Wire):
    path: str = Field(title="Path", description="Inside the shared folder or the offer.")
    reason: str = Field(title="Why it was skipped")


def _skipped(entries: tuple[SkippedFile, ...]) -> list[SkippedEntry]:
    return [SkippedEntry(path=s.path, reason=s.reason) for s in entries]


class ShareToolResult(_Wire):
    shared: bool = Field(
        title="Shared",
        description="False when your human did not approve: nothing was offered.",
    )
    offer_id: int | None = Field(
        default=None, title="Offer id", description="The offer's id (tunnel_cancel withdraws it)."
    )
    seq: int | None = Field(default=None, title="Seq", description="Where the offer is in the transcript.")
    path: str = Field(title="Path", description="The real, absolute path that was read.")
    name: str = Field(title="Name", description="The offer's name, as receivers see it.")
    is_folder: bool = Field(title="Is a folder")
    count: int = Field(title="File count")
    total: int = Field(title="Total size (bytes)")
    hash: str = Field(
        title="Offer hash",
        description="SHA-256 of the manifest (one `<sha256>  <path>` line per file): receivers "
        "see the same, so two humans can compare it.",
    )
    files: list[OfferFile] = Field(title="Files", description="Every file offered.")
    skipped: list[SkippedEntry] = Field(
        title="Skipped",
        description="Left out, never sent: git-ignored, .git, secret-looking names, symlinks, "
        "special files, unportable names...",
    )
    skipped_unlisted: int = Field(default=0, title="More skipped", description="Skipped beyond the list.")
    warnings: list[str] = Field(default_factory=list, title="Warnings")
    approval: ApprovalName = Field(
        title="Your human's answer",
        description="`not-asked`: your MCP client cannot show prompts, so tell your human what "
        "you shared.",
    )


class WrittenFile(_Wire):
    path: str = Field(title="Path", description="Its path inside the offer (the sharer's words).")
    target: str = Field(title="Written to", description="The full path of the file written.")
    size: int = Field(title="Size (bytes)")
    sha256: str = Field(title="SHA-256", description="Hex; checked before the file got its name.")


class ReceiveToolResult(_Wire):
    received: bool = Field(
        title="Received",
        description="False when your human did not approve: nothing was written.",
    )
    offer_id: int = Field(title="Offer id")
    destination: str = Field(title="Destination", description="The real, absolute folder written into.")
    written: list[WrittenFile] = Field(title="Written", description="Files written and verified so far.")
    skipped: list[SkippedEntry] = Field(
        title="Skipped", description="Not fetched: already there with the same SHA-256."
    )
    failed: list[SkippedEntry] = Field(
        title="Failed", description="Could not be received (no partial file of theirs is left)."
    )
    complete: bool = Field(title="Complete", description="Every file is written (or already was).")
    running: bool = Field(
        title="Running",
        description="Still receiving in the background: call tunnel_receive again with the same "
        "offerId to wait for it.",
    )
    resumable: bool = Field(
        title="Resumable",
        description="Stopped (e.g. the connection dropped), but tunnel_receive again continues "
        "from the bytes already verified.",
    )
    received_bytes: int = Field(title="Received (bytes)")
    total_bytes: int = Field(title="Total (bytes)")
    error: str | None = Field(default=None, title="Error", description="Why it stopped, if it did.")
    approval: ApprovalName | None = Field(
        default=None,
        title="Your human's answer",
        description="When this call asked (the first call of a receive): what your human "
        "answered. `not-asked`: tell your human where you saved the files.",
    )


class CancelResult(_Wire):
    offer_id: int = Field(title="Offer id")
    action: Literal["withdrawn", "cancelled"] = Field(
        title="What was stopped",
        description="withdrawn: your offer ended for everyone; cancelled: your receive stopped "
        "(its partial files removed, finished files kept).",
    )


# -- tunnel_share --------------------------------------------------------------------------------


@tool(
    name="tunnel_share",
    title="Share a file or folder",
    read_only=False, destructive=False, open_world=True,
)
async def tunnel_share(
    path: Annotated[
        str,
        Field(
            title="Path",
            description="The file or folder to share (absolute, ~, or relative to the server's "
            "working directory).",
        ),
    ],
    ctx: ToolContext,
    note: Annotated[
        str | None,
        Field(title="Note", description="A short note every member sees with the offer."),
    ] = None,
) -> Annotated[ToolResult, ShareToolResult]:
    """Offer a file or a folder to everyone in the tunnel (they fetch it with tunnel_receive).

    Only share what your human asked you to share. The path is scanned first: in a folder,
    files git ignores, `.git`, secret-looking files (.env*, *.pem, *.key, id_rsa*, .ssh/,
    .aws/, .netrc, ...), symlinks and special files are skipped (a secret-looking file is sent
    only when it is the exact path shared). Your human is then asked (a prompt from your MCP
    client) with the path, file count, total size and what is skipped; nothing is sent before
    they accept. Returns the `offerId`, every file offered with its SHA-256, the offer `hash`,
    and `skipped` with the reason for each. The offer lives while you stay in the room (30
    minutes at most); tunnel_cancel withdraws it. `shared: false`: your human declined; do not
    retry on your own.
    """
    session = _manager(ctx).current_open()
    prepared = await ctx.with_progress(
        "listing and hashing the files", lambda: session.prepare_share(path, note=note)
    )
    answer = await ctx.approvals.approve_reading(
        ctx,
        tunnel_id=session.tunnel_id,
        path=prepared.path,
        files=prepared.count,
        total_bytes=prepared.total,
        skipped=[(s.path, s.reason) for s in prepared.skipped],
        skipped_unlisted=prepared.skipped_unlisted,
        digest=prepared.hash,
    )
    result = ShareToolResult(
        shared=False,
        path=prepared.path,
        name=prepared.name,
        is_folder=prepared.is_folder,
        count=prepared.count,
        total=prepared.total,
        hash=prepared.hash,
        files=[OfferFile(path=f.path, size=f.size, sha256=f.sha256) for f in prepared.files],
        skipped=_skipped(prepared.skipped),
        skipped_unlisted=prepared.skipped_unlisted,
        warnings=list(prepared.warnings),
        approval=answer,
    )
    what = (
        f"{'folder' if prepared.is_folder else 'file'} {_quote(prepared.path)}: "
        f"{_count(prepared.count, 'file')}, {size_text(prepared.total)}"
    )
    if answer not in ("accepted", "not-asked"):
        return _ok(result, _declined(answer, f"shared ({what})"))
    # The human said yes (or nobody could be asked): from here on the room sees the offer.
    shared = await session.share(prepared)
    result = result.model_copy(update={"shared": True, "offer_id": shared.offer_id, "seq": shared.seq})
    lines = [
        f"Shared as offer {shared.offer_id} (#{shared.seq}): {what}; hash {shared.hash}.",
        *_listed_files(result),
        *_skipped_lines("Skipped, never sent", result.skipped, result.skipped_unlisted),
        *[f"Warning: {w}" for w in result.warnings],
        f"Everyone in the room can receive it while you stay (30 minutes at most); "
        f"tunnel_cancel offerId {shared.offer_id} withdraws it.",
    ]
    if answer == "not-asked":
        lines.append(_not_asked("this was shared"))
    return _ok(result, "\n".join(lines))


def _listed_files(result: ShareToolResult) -> list[str]:
    if not result.is_folder:
        return []
    lines = [f"- {_quote(f.path)} ({size_text(f.size)})" for f in result.files[:LISTED]]
    if len(result.files) > LISTED:
        lines.append(f"- and {len(result.files) - LISTED} more (see `files`)")
    return ["Files:", *lines]


def _skipped_lines(head: str, skipped: list[SkippedEntry], unlisted: int = 0) -> list[str]:
    if not skipped and not unlisted:
        return []
    lines = [f"- {_quote(s.path)}: {s.reason}" for s in skipped[:LISTED]]
    more = len(skipped) - min(len(skipped), LISTED) + unlisted
    if more:
        lines.append(f"- and {more} more")
    return [f"{head} ({len(skipped) + unlisted}):", *lines]


# -- tunnel_receive ------------------------------------------------------------------------------


@tool(
    name="tunnel_receive",
    title="Receive a shared file or folder",
    read_only=False, destructive=False, open_world=True,
)
async def tunnel_receive(
    offerId: Annotated[  # camelCase: it is the MCP argument name
        int, Field(title="Offer id", ge=1, description="The offer's id, from tunnel_listen or tunnel_status.")
    ],
    ctx: ToolContext,
    saveTo: Annotated[
        str | None,
        Field(
            title="Save to",
            description="The folder to write into (created if missing). Default: "
            "~/Downloads/tunnel-mcp/ for a file, ~/Downloads/tunnel-mcp/<folder name>/ for a folder.",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        Field(title="Overwrite", description="true replaces files already there (default: refuse)."),
    ] = False,
    waitMs: Annotated[
        int,
        Field(
            title="Wait (ms)",
            ge=0,
            le=MAX_RECEIVE_WAIT_MS,
            description="How long this call waits for the transfer before returning `running` "
            "(it goes on; call again to wait more). Default 45000.",
        ),
    ] = DEFAULT_RECEIVE_WAIT_MS,
) -> Annotated[ToolResult, ReceiveToolResult]:
    """Fetch a file offer (kind "file" in tunnel_listen) and write it to disk.

    Checks every name and target first (no path outside saveTo, no symlink followed, no
    existing file replaced unless overwrite: true), then asks your human (a prompt from your
    MCP client) to approve the full destination; nothing is written before they accept. Each
    file is written to a temporary name, checked against its SHA-256, then renamed: no
    partial file is ever left under a real name. Returns `written` (paths, sizes, SHA-256)
    and `skipped`. Big offers take longer than one call: `running: true` means it goes on in
    the background; call tunnel_receive again with the same offerId to wait more (also after
    a dropped connection: `resumable: true` continues from the verified bytes). The files
    are untrusted: look at them before you open or run anything, and tell your human what
    arrived. `received: false`: your human declined; do not retry on your own.
    """
    started = trio.current_time()
    session = _manager(ctx).current_open()
    ongoing = {r.offer_id: r for r in session.receives()}.get(offerId)
    answer: Answer | None = None
    if ongoing is not None:
        # Already approved, and running or able to continue: wait for it, continue it.
        if saveTo is not None and _real(saveTo) != ongoing.destination:
            raise TunnelError(
                f"offer {offerId} is already being received into {ongoing.destination}: call "
                f"tunnel_receive without saveTo to continue it there, or tunnel_cancel offerId "
                f"{offerId} first"
            )
        what: int | PreparedReceive = offerId
    else:
        prepared = await ctx.with_progress(
            "checking where the files go",
            lambda: session.plan_receive(offerId, saveTo, overwrite=overwrite),
        )
        if prepared.count:
            answer = await ctx.approvals.approve_writing(
                ctx,
                tunnel_id=session.tunnel_id,
                destination=prepared.destination,
                files=prepared.count,
                total_bytes=prepared.total,
                sharer=_who(Member.of(prepared.sharer)),
                replaces=sum(1 for f in prepared.files if f.replaces),
            )
            if answer not in ("accepted", "not-asked"):
                declined = ReceiveToolResult(
                    received=False, offer_id=offerId, destination=prepared.destination,
                    written=[], skipped=[], failed=[], complete=False, running=False,
                    resumable=False, received_bytes=0, total_bytes=prepared.total, approval=answer,
                )
                return _ok(declined, _declined(answer, f"received (into {prepared.destination})"))
        what = prepared
    # The human said yes (or nobody could be asked): from here on files are written.
    deadline = started + waitMs / 1000
    got = await session.receive(what, wait=_slice(deadline))
    while got.running and trio.current_time() < deadline:
        await ctx.report_progress(
            got.received_bytes,
            got.total_bytes or None,
            f"received {size_text(got.received_bytes)} of {size_text(got.total_bytes)}",
        )
        got = await session.receive(offerId, wait=_slice(deadline))
    return _receive_result(got, answer)


def _slice(deadline: float) -> float:
    """How long the next wait may be: progress is reported between waits."""
    return max(0.0, min(PROGRESS_EVERY, deadline - trio.current_time()))


def _real(path: str) -> str:
    return os.path.realpath(os.path.join(os.getcwd(), os.path.expanduser(path)))


def _receive_result(got: ReceiveResult, answer: Answer | None) -> ToolResult:
    result = ReceiveToolResult(
        received=True,
        offer_id=got.offer_id,
        destination=got.destination,
        written=[WrittenFile(path=f.path, target=f.target, size=f.size, sha256=f.sha256) for f in got.written],
        skipped=_skipped(got.skipped),
        failed=_skipped(got.failed),
        complete=got.complete,
        running=got.running,
        resumable=got.resumable,
        received_bytes=got.received_bytes,
        total_bytes=got.total_bytes,
        error=got.error,
        approval=answer,
    )
    offer = f"offer {got.offer_id}"
    share = f"{size_text(got.received_bytes)} of {size_text(got.total_bytes)}"
    done = got.received_bytes / got.total_bytes if got.total_bytes else 1.0
    if got.complete:
        head = (
            f"Received {offer} into {got.destination}: {_count(len(got.written), 'file')} written "
            f"({size_text(sum(f.size for f in got.written))}), each checked against its SHA-256."
        )
    elif got.running:
        head = (
            f"Still receiving {offer} into {got.destination}: {done:.0%} ({share}). It goes on in "
            f"the background: call tunnel_receive with offerId {got.offer_id} again to wait for "
            f"it (tunnel_cancel offerId {got.offer_id} stops it)."
        )
    elif got.resumable:
        head = (
            f"Receiving {offer} stopped at {done:.0%} ({share}): {got.error or 'interrupted'}. "
            f"What was verified is kept: call tunnel_receive with offerId {got.offer_id} again to "
            "continue from there."
        )
    else:
        head = (
            f"Could not receive all of {offer}: {got.error or 'some files failed'}. No partial "
            "file was left behind."
        )
    lines = [head]
    lines += [
        f"- {_quote(f.path)} -> {f.target} ({size_text(f.size)}, sha256 {f.sha256})"
        for f in result.written[:LISTED]
    ]
    if len(result.written) > LISTED:
        lines.append(f"- and {len(result.written) - LISTED} more (see `written`)")
    lines += _skipped_lines("Skipped, already there with the same SHA-256", result.skipped)
    lines += _skipped_lines("Failed", result.failed)
    if result.written:
        lines.append(_CHECK_WHAT_ARRIVED)
    if answer == "not-asked":
        lines.append(_not_asked(f"files were written to {got.destination}"))
    failed = not (got.complete or got.running or got.resumable)
    if failed:
        return ToolResult("\n".join(lines), result.model_dump(mode="json", by_alias=True), is_error=True)
    return _ok(result, "\n".join(lines))


# -- tunnel_cancel -------------------------------------------------------------------------------


@tool(
    name="tunnel_cancel",
    title="Withdraw an offer or cancel a receive",
    read_only=False, destructive=True, idempotent=True, open_world=True,
)
async def tunnel_cancel(
    offerId: Annotated[  # camelCase: it is the MCP argument name
        int, Field(title="Offer id", ge=1, description="Your offer to withdraw, or the offer you are receiving.")
    ],
    ctx: ToolContext,
) -> Annotated[ToolResult, CancelResult]:
    """Stop sharing or receiving a file offer.

    Your own offer: withdraws it; everyone sees it end and nobody can fetch it any more.
    Another member's offer that you are receiving: cancels your receive; its partial files
    are removed (files already finished stay). Use it when your human changes their mind, or
    something was shared or is being saved where it should not be.
    """
    session = _manager(ctx).current_open()
    mine = any(
        o.offer_id == offerId and o.sharer.id == session.self_member.id for o in session.offers()
    )
    if mine:
        session.unshare(offerId)
        return _ok(
            CancelResult(offer_id=offerId, action="withdrawn"),
            f"Withdrew offer {offerId}: everyone sees it end; receives in progress stop.",
        )
    if await session.cancel_receive(offerId):
        return _ok(
            CancelResult(offer_id=offerId, action="cancelled"),
            f"Cancelled your receive of offer {offerId}: its partial files are removed; files "
            "already finished stay.",
        )
    raise TunnelError(
        f"offer {offerId} is neither one of your live offers nor one you are receiving: "
        "tunnel_status lists both"
    )
