"""The `tunnel-mcp` command: an MCP server on stdio by default, plus a few helper commands.

stdout belongs to MCP: when serving, nothing but JSON-RPC messages may be written there, so every
log line and notice goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tunnel_mcp import __version__

log = logging.getLogger("tunnel_mcp")

LOG_LEVELS = ("debug", "info", "warning", "error")

WAITING = (
    "tunnel-mcp: waiting for an MCP client on stdin (this is an MCP server; register it with "
    "your agent, see README)"
)

DESCRIPTION = """\
Let your AI agent talk to another developer's agent through an ephemeral, end-to-end-encrypted
tunnel. With no command, serves MCP on stdin/stdout: register it with your agent, e.g.
    {register}
"""


LOG_LEVEL_ENV = "TUNNEL_LOG_LEVEL"


def _log_level(parser: argparse.ArgumentParser, given: str | None) -> str:
    """--log-level if given (before or after the command), else $TUNNEL_LOG_LEVEL, else warning."""
    if given is not None:
        return given
    configured = os.environ.get(LOG_LEVEL_ENV, "").strip()
    if not configured:
        return "warning"
    if configured.lower() not in LOG_LEVELS:
        parser.error(
            f"{LOG_LEVEL_ENV}={configured!r} is not a log level: set it to one of "
            f"{', '.join(LOG_LEVELS)}, or unset it"
        )
    return configured.lower()


class _Parser(argparse.ArgumentParser):
    """The top-level parser (its subcommands' parsers are plain ones)."""

    def format_help(self) -> str:
        if self.prog == "tunnel-mcp":
            # The registration example names this very copy (tunnel_mcp.build); reading the
            # package metadata for it is paid by --help only, not by every server start.
            from tunnel_mcp.build import this_build

            self.description = DESCRIPTION.format(register=this_build().register_command())
        return super().format_help()


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tunnel-mcp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tunnel-mcp {__version__}")
    log_help = f"how much to log on stderr (default: ${LOG_LEVEL_ENV}, else warning)"
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None, help=log_help)
    # The same option after the command (`tunnel-mcp serve --log-level debug`); SUPPRESS keeps a
    # command that did not get it from overwriting one given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help=log_help)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=argparse.ArgumentParser
    )

    commands.add_parser(
        "serve", parents=[common], help="serve MCP on stdio (the default when no command is given)"
    )

    install = commands.add_parser(
        "install-skill",
        parents=[common],
        help="install the tunnel-etiquette skill for Claude Code",
        description="Copy the tunnel-etiquette skill to DIR/tunnel-etiquette/SKILL.md. A copy you "
        "edited is kept unless --force.",
    )
    install.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="skills directory (default: $TUNNEL_SKILLS_DIR, else ~/.claude/skills)",
    )
    install.add_argument("--force", action="store_true", help="overwrite a copy you edited")

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="show two agents pairing through a tunnel, end to end",
        description="Start two real tunnel-mcp servers (host and guest), drive them as two agents "
        "would, and narrate every step.",
    )
    demo.add_argument(
        "--transport",
        choices=("local", "cloudflared"),
        default="local",
        help="local (default, works offline) or cloudflared (a real Quick Tunnel)",
    )
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="tunnel-mcp %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(_log_level(parser, args.log_level))
    match args.command:
        case None | "serve":
            from tunnel_mcp.manager import room_capacity

            try:
                room_capacity()  # a bad value fails now, not at the agent's first tunnel_open
            except ValueError as exc:
                parser.error(str(exc))
            return _serve()
        case "install-skill":
            return _install_skill(args.dir, force=args.force)
        case "demo":
            from tunnel_mcp.demo import run_demo

            return run_demo(transport=args.transport)
        case _:  # pragma: no cover - argparse rejects unknown commands with exit 2
            return 2


def _install_skill(directory: Path | None, *, force: bool) -> int:
    from tunnel_mcp.skill_install import install_skill

    try:
        result = install_skill(directory, force=force)
    except OSError as exc:
        print(f"tunnel-mcp: could not install the skill: {exc}", file=sys.stderr)
        return 1
    print(result.describe())
    return 1 if result.action == "kept-edited" else 0


def _auto_install_skill() -> None:
    """Best effort, once per start: Python packages have no post-install hook."""
    if os.environ.get("TUNNEL_SKIP_SKILL_INSTALL", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    from tunnel_mcp.skill_install import auto_install

    try:
        result = auto_install()
    except OSError as exc:
        log.debug("skill not installed: %s", exc)
        return
    if result is None:
        log.debug("the skill was removed after we installed it; not reinstalling")
        return
    if result.first_time:
        # Said once, loudly: this is the one time the server writes into the user's home
        # without being asked (later updates of our own copy are only logged at info).
        log.warning(
            "%s, where Claude Code finds it. This happens once: set TUNNEL_SKIP_SKILL_INSTALL=1 "
            "to stop it, or delete that folder (it is not put back). MCP clients with the skills "
            "extension read the skill from the server instead.",
            result.describe(),
        )
    elif result.changed:
        log.info("%s", result.describe())
    elif result.action == "kept-edited":
        log.debug("%s", result.describe())


def _serve() -> int:
    from tunnel_mcp.stdio import serve_stdio

    _auto_install_skill()
    return serve_stdio(banner=WAITING)
