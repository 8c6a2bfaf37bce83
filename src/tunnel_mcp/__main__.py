"""`python -m tunnel_mcp`: the same as the `tunnel-mcp` command."""

from tunnel_mcp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
