"""tunnel_mcp: the MCP server, CLI and etiquette skill."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tunnel-mcp")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
