"""tunnel_mcp: the MCP server, CLI and etiquette skill."""

#: pyproject.toml's version, repeated (a test keeps them equal): the server's answer to the
#: client's `initialize` names it, and looking it up with importlib.metadata would add ~30 ms
#: of imports before that answer.
__version__ = "0.1.0"
