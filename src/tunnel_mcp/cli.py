"""Command-line entry point (filled in by the MCP issue)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("tunnel-mcp: not implemented yet", file=sys.stderr)
    return 2
