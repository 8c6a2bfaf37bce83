"""The TLS client context every outgoing HTTPS connection uses.

One place decides what we trust: the platform's default store, plus the PEM bundle named by
``TUNNEL_CA_BUNDLE`` when it is set. The extra bundle exists for corporate TLS-inspecting
proxies, for mirror operators with a private CA, and for tests (a ``trustme`` CA). It is
*added* to the default store, never a replacement, so setting it cannot silently turn off
verification of the public resolvers.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

CA_BUNDLE_ENV = "TUNNEL_CA_BUNDLE"


def client_ssl_context(env: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """A verifying client context: system CAs plus ``TUNNEL_CA_BUNDLE`` if set.

    Raises ValueError (with the path, and what to do) when the bundle cannot be loaded:
    silently ignoring a bundle the user asked for would only move the failure to a
    confusing certificate error later.
    """
    if env is None:
        env = os.environ
    context = ssl.create_default_context()
    cafile = env.get(CA_BUNDLE_ENV, "").strip()
    if cafile:
        try:
            context.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ValueError(
                f"{CA_BUNDLE_ENV}={cafile!r} could not be loaded ({reason}); "
                "point it at a readable PEM file of CA certificates, or unset it"
            ) from None
    return context
