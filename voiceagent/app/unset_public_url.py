"""What ``serve`` does when PUBLIC_URL is unset and signatures are checked.

Twilio signs the URL it calls. Without PUBLIC_URL the URL a signature is checked against is
built from each request as it arrives (``signature.public_base``): this server's own scheme
(it speaks plain http) and the request's Host header, or the X-Forwarded-* headers with
TRUST_PROXY_HEADERS. That is right only for a client that calls this address itself
(``voiceagent call``); behind a tunnel, a load balancer or a proxy that ends TLS or rewrites
Host, every call is refused (403), and nothing said so before the first call came in.

On ECS (``ECS_AGENT_URI`` is set in every task) the task is always behind a load balancer
with a fixed public address, so the setting is required there: the task then fails at start,
and the deployment circuit breaker rolls back a deploy that would otherwise pass its health
checks and refuse every call. Elsewhere (a laptop, ``docker compose`` before the tunnel's URL
is known) it is a warning at start naming the URL it will check, said once per server: with
several processes on one port (``WORKERS`` > 1, the image's entrypoint), by worker 0 alone,
as each process said it before and one unset setting read as several problems.
"""

from __future__ import annotations

from voiceagent.settings import Settings

FIX = "set PUBLIC_URL to the https:// base URL Twilio calls, e.g. https://agent.example.com"


def problem(settings: Settings) -> str | None:
    """The setting problem that stops ``serve`` (and that ``check`` reports), if any."""
    if not settings.validate_signatures or settings.public_url or not settings.ecs_agent_uri:
        return None
    return ("PUBLIC_URL: required on ECS (ECS_AGENT_URI is set) while signatures are checked: "
            "behind the load balancer this server sees http:// and whatever Host the balancer "
            "passes, not the https:// URL Twilio signs, so every call would be refused (403) "
            f"by a task that looks healthy; {FIX} (the SAM template sets it from DomainName)")


def warning(settings: Settings) -> dict[str, str] | None:
    """The fields of the one warning ``serve`` logs at start, or None when PUBLIC_URL is set,
    nothing is signature-checked, or another worker of the server says it (``WORKER_INDEX``
    above 0)."""
    if not settings.validate_signatures or settings.public_url or settings.worker_index:
        return None
    if settings.trust_proxy_headers:
        checked = "<X-Forwarded-Proto>://<X-Forwarded-Host, else Host>/twiml"
        risk = ("right only behind a proxy of yours that sets both headers and drops a "
                "client's own: one that passes them through (an AWS ALB passes "
                "X-Forwarded-Host) lets the sender choose the URL its signature is checked "
                "against")
    else:
        checked = "http://<the request's Host header>/twiml"
        risk = ("right only for a client that calls this address itself (voiceagent call); "
                "behind a tunnel, load balancer or proxy that ends TLS or rewrites Host, the "
                "URL seen here is not the one Twilio signed and every call is refused (403)")
    return {"checked_url": checked, "risk": risk, "fix": FIX}
