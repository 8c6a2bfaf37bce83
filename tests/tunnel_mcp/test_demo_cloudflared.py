"""`tunnel-mcp demo --transport cloudflared`, end to end against the fake cloudflared.

The internet path through Cloudflare cannot run here, so the fake plays the edge: the host
server starts it as its cloudflared, reads the quick-tunnel URL from its log, waits for the
name to resolve through DoH (a local resolver with a trustme certificate), and the guest and
intruder servers dial the https link, with TLS for the trycloudflare name, to the fake's port
via TUNNEL_CONNECT_TO. All three are real `tunnel-mcp` processes, as in `make demo`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import trio
import trustme
from _servers import FAKE, HOSTNAME, TUNNEL_HOST, closed_port, run_doh_server, write_leaf_files


async def test_the_cloudflared_demo_runs_through_a_fake_edge(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    cert, key = write_leaf_files(ca, tmp_path, TUNNEL_HOST)
    doh = await run_doh_server(nursery, ca, {TUNNEL_HOST: ["127.0.0.1"]})
    edge_port = closed_port()  # free now; the fake listens there once the host starts it
    env = {
        **os.environ,
        "TUNNEL_CLOUDFLARED": str(FAKE),
        "TUNNEL_HOME": str(tmp_path / "tunnel-home"),
        "TUNNEL_CA_BUNDLE": str(bundle),
        "TUNNEL_DOH_RESOLVERS": doh.url,
        "TUNNEL_CONNECT_TO": f"{TUNNEL_HOST}:443:127.0.0.1:{edge_port}",
        "FAKE_CLOUDFLARED_MODE": "ok",
        "FAKE_CLOUDFLARED_HOSTNAME": HOSTNAME,
        "FAKE_CLOUDFLARED_TLS_CERT": str(cert),
        "FAKE_CLOUDFLARED_TLS_KEY": str(key),
        "FAKE_CLOUDFLARED_EDGE_PORT": str(edge_port),
        "FAKE_CLOUDFLARED_PID_FILE": str(tmp_path / "fake.pid"),
    }
    env.pop("TUNNEL_DOH", None)
    with trio.fail_after(240):
        done = await trio.run_process(
            [sys.executable, "-m", "tunnel_mcp", "demo", "--transport", "cloudflared"],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, out[-3000:] + err[-3000:]
    assert f"https://{TUNNEL_HOST}/t/" in out  # the link the host's cloudflared published
    for promise in ("tunnel_join", "already used", "Noise ciphertext", "no child process"):
        assert promise in out
    assert "the public URL no longer reaches a relay" in out
    assert "Demo complete" in out
    assert not re.search(r"#[A-Za-z0-9_-]{43}", out + err)
    # The host server started the fake (it never got the port file, only its own log), and
    # the fake is gone with it.
    pid = int((tmp_path / "fake.pid").read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"the fake cloudflared (pid {pid}) outlived the demo")
    assert doh.queries >= 1  # readiness was checked through DoH

