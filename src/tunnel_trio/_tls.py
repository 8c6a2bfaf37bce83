"""The TLS client context every outgoing HTTPS connection uses.

One place decides what we trust: the operating system's trust store, through ``truststore``,
plus the PEM bundle named by ``TUNNEL_CA_BUNDLE`` when it is set. Users: the guest's ``wss://``
dial, DNS-over-HTTPS and the cloudflared download.

Why the OS store and not ``ssl.create_default_context()``: that one trusts whatever OpenSSL was
built to find, and the Pythons users actually run often find nothing (python.org's macOS builds
until "Install Certificates.command" is run; uv-managed standalone builds), so every dial fails
certificate verification. truststore verifies with the platform's own verifier (Security
framework on macOS, CryptoAPI on Windows, the system CA files on Linux), so certificates the
user's machine trusts, including a company's proxy CA installed there, work.

The extra bundle is for TLS-inspecting proxies whose CA is not in the OS store, mirror
operators with a private CA, and tests (a ``trustme`` CA). It is *added* to the OS store,
never a replacement, so setting it cannot silently turn off verification of the public
resolvers.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

CA_BUNDLE_ENV = "TUNNEL_CA_BUNDLE"


def client_ssl_context(env: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """A verifying client context: the OS trust store plus ``TUNNEL_CA_BUNDLE`` if set.

    Raises ValueError (with the path, and what to do) when the bundle cannot be loaded:
    silently ignoring a bundle the user asked for would only move the failure to a
    confusing certificate error later.
    """
    import truststore  # imported here: only a dial needs it, not the server's start

    if env is None:
        env = os.environ
    context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cafile = env.get(CA_BUNDLE_ENV, "").strip()
    if cafile:
        try:
            # truststore honours these on every platform, beside the OS store.
            context.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ValueError(
                f"{CA_BUNDLE_ENV}={cafile!r} could not be loaded ({reason}); "
                "point it at a readable PEM file of CA certificates, or unset it"
            ) from None
    return context
