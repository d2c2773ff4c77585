"""The web console: the gateway's pages for people, served by its own HTTP endpoint at ``/``.

Login with the configuration's users (``security.users``), server-side sessions with a CSRF
token each, an overview of the gateway's health, the signals' latest values with live updates
(Server-Sent Events, coalesced per signal), spectra and the processors' outputs and alarms
(:mod:`.spectra`, :mod:`.models`) and the controlled write path for those who may write. See
:mod:`gateway.console.handler` for the routes and docs/decisions/0033-web-console.md for the
design.
"""

from .handler import MAX_STREAMS, Console

__all__ = ["MAX_STREAMS", "Console"]
