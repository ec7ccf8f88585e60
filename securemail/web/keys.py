"""Typed AppKeys and request keys shared by the web modules."""

from __future__ import annotations

from aiohttp import web

from securemail.access import Person
from securemail.accounts.session import Session
from securemail.config import Settings
from securemail.ops.health import Monitor
from securemail.services import Services

settings_key = web.AppKey("settings", Settings)
services_key = web.AppKey("services", Services)
#: False: the app starts no background task (tests drive the worker themselves).
run_worker_key = web.AppKey("run_worker", bool)
#: The process's health monitor (cached checks), shared by /healthz and the health recorder.
monitor_key = web.AppKey("health_monitor", Monitor)

#: Set by the auth middleware: who is acting (deny by default: absent on open routes).
ACTOR = web.RequestKey("actor", Person)
#: Set by the auth middleware for cookie sessions (absent for API tokens).
SESSION = web.RequestKey("session", Session)
