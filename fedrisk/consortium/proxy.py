"""The bank-facing proxy: nginx terminates TLS and forwards the Fleet API, nothing else.

Flower 1.41's open-source SuperLink serves its Control API (submit runs, register and
unregister nodes, list runs and nodes), the Fleet API (what SuperNodes call), the
Runtime API (ServerApp <-> SuperLink) and ``/docs`` on one port, and the Control API
has no authentication. So the SuperLink listens on a loopback address only (the
consortium's ``control-address``), and nginx listens on the address banks dial
(``fleet-address``) with the consortium's server certificate. nginx forwards exactly
the POST calls an authenticated SuperNode makes (:data:`FLEET_CALLS`), each to one
literal upstream path, over TLS verified against the consortium CA; every other
request (Control, Runtime, the Fleet calls that register or unregister a node, docs,
openapi, health, any other method) is answered 403 by nginx and never reaches the
SuperLink. The forwarded calls still carry the SuperNode's signature, which the
SuperLink checks against the registered keys.

Every file nginx uses (configuration, pid, temp paths, access log) lives inside the
consortium directory, so it runs as an unprivileged user and as root alike; the
error log is its standard error (``DIR/logs/proxy.log`` under ``consortium up``).
"""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx

from fedrisk.consortium.commands import Command
from fedrisk.consortium.errors import ConsortiumError
from fedrisk.consortium.layout import Layout, Settings

FLEET_CALLS = ("activate-node", "deactivate-node", "send-node-heartbeat", "pull-messages",
               "push-messages", "get-run", "get-fab", "push-object", "pull-object",
               "confirm-message-received")
"""Fleet API calls of a SuperNode that authenticates with a registered key.

``register-node`` and ``unregister-node`` are left out: under
``--enable-supernode-auth`` nodes are registered by the coordinator (Control API, on
its own host), never by themselves.
"""

MAX_BODY = "16m"
"""Largest request body: Flower pushes arrays in chunks of at most 5 MB."""

UPSTREAM_TIMEOUT = "300s"
ACCESS_LOG = "proxy-access.log"
NGINX_HINT = ("nginx is not installed; the coordinator's bank-facing proxy needs it "
              "(`apt-get install nginx`)")
_SEARCH_PATH = "/usr/sbin:/sbin:/usr/local/sbin"
_REACHED_SUPERLINK = 401  # a Fleet call without a node signature: refused by the SuperLink


def find_nginx() -> str:
    """The nginx executable (PATH, then the sbin folders); a one-line error if missing."""
    found = shutil.which("nginx") or shutil.which("nginx", path=_SEARCH_PATH)
    if found is None:
        raise ConsortiumError(NGINX_HINT)
    return found


def nginx_config(layout: Layout, settings: Settings) -> str:
    """The proxy's ``nginx.conf`` for this consortium (absolute paths inside ``DIR``)."""
    proxy, logs = layout.proxy_dir, layout.logs
    temp = "\n".join(f"    {kind}_temp_path {proxy}/tmp/{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    locations = "\n".join(_fleet_location(call) for call in FLEET_CALLS)
    return f"""\
# fedrisk consortium proxy, written by `fedrisk consortium init` and on every `up`.
# Banks dial {settings.fleet_address}; only the Fleet API calls of an authenticated
# SuperNode pass, to the SuperLink on {settings.control_address} (this host only).
# Everything else (Control and Runtime APIs, node registration, docs) is refused here.
worker_processes 1;
pid {proxy}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 512;
}}

http {{
    server_tokens off;
    log_format fleet '$time_iso8601 $remote_addr "$request" $status $body_bytes_sent '
                     'upstream=$upstream_status $request_time';
    access_log {logs}/{ACCESS_LOG} fleet;
{temp}

    upstream superlink {{
        server {_join(settings.control_host, settings.control_port)};
        keepalive 16;
    }}

    server {{
        listen {_join(settings.coordinator_host, settings.fleet_port)} ssl;
        ssl_certificate {layout.server_cert};
        ssl_certificate_key {layout.server_key};
        ssl_protocols TLSv1.2 TLSv1.3;

        # Bodies stay in memory (no temp files, so workers need no access to DIR).
        client_max_body_size {MAX_BODY};
        client_body_buffer_size {MAX_BODY};
        proxy_max_temp_file_size 0;

        # Flower's SuperNode speaks HTTP/1.1 (httpx); so does the SuperLink (uvicorn).
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_read_timeout {UPSTREAM_TIMEOUT};
        proxy_send_timeout {UPSTREAM_TIMEOUT};
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate {layout.ca_cert};
        proxy_ssl_name localhost;
        proxy_ssl_server_name on;
        proxy_ssl_verify_depth 2;
        proxy_ssl_session_reuse on;

{locations}

        location / {{
            return 403;
        }}
    }}
}}
"""


def write_proxy_config(layout: Layout, settings: Settings) -> None:
    """Write ``coordinator/proxy/nginx.conf`` (its folder and temp folder 0700)."""
    (layout.proxy_dir / "tmp").mkdir(parents=True, exist_ok=True, mode=0o700)
    layout.proxy_config.write_text(nginx_config(layout, settings))


def proxy_command(layout: Layout, nginx: str = "nginx") -> Command:
    """The proxy command: nginx in the foreground with the consortium's configuration."""
    return Command("proxy", [nginx, "-p", str(layout.proxy_dir), "-c", str(layout.proxy_config),
                             "-e", "stderr", "-g", "daemon off;"], cwd=layout.coordinator)


def validate_proxy_config(layout: Layout, nginx: str) -> None:
    """``nginx -t`` of the proxy configuration; a one-line error if it is invalid."""
    done = subprocess.run([nginx, "-t", "-q", "-p", str(layout.proxy_dir), "-c",
                           str(layout.proxy_config), "-e", "stderr"],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        detail = " ".join((done.stderr or done.stdout).split())[:300]
        raise ConsortiumError(f"the proxy configuration {layout.proxy_config} is invalid: "
                              f"{detail}")


def check_proxy(layout: Layout, settings: Settings, deadline: float) -> None:
    """Check the running proxy from the banks' side; a one-line error unless it works.

    A Fleet call must reach the SuperLink through the proxy (the SuperLink, not nginx,
    refuses it for lack of a node signature) and ``/docs`` must be refused by nginx.
    """
    base = f"https://{settings.fleet_address}"
    while True:
        try:
            with httpx.Client(verify=str(layout.ca_cert), timeout=10.0) as client:
                fleet = client.post(f"{base}/v1/fleet/get-run",
                                    headers={"content-type": "application/protobuf"})
                docs = client.get(f"{base}/docs")
            break
        except httpx.HTTPError as error:
            if time.monotonic() > deadline:
                raise ConsortiumError(f"the proxy on {settings.fleet_address} does not answer "
                                      f"over TLS: {error}") from None
            time.sleep(0.2)
    if fleet.status_code != _REACHED_SUPERLINK:
        raise ConsortiumError(f"a Fleet call through the proxy on {settings.fleet_address} "
                              f"did not reach the SuperLink (HTTP {fleet.status_code}); see "
                              f"{layout.logs / 'proxy.log'}")
    if docs.status_code != 403:
        raise ConsortiumError(f"the proxy on {settings.fleet_address} serves /docs "
                              f"(HTTP {docs.status_code}); it must forward the Fleet API only")


def _fleet_location(call: str) -> str:
    path = f"/v1/fleet/{call}"
    return (f"        location = {path} {{\n"
            f"            limit_except POST {{ deny all; }}\n"
            f"            proxy_pass https://superlink{path};\n"
            f"        }}")


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
