"""Typed AppKeys and request keys shared by the web modules."""

from __future__ import annotations

from aiohttp import web

from securemail.config import Settings
from securemail.services import Services

settings_key = web.AppKey("settings", Settings)
services_key = web.AppKey("services", Services)

ACTOR = "securemail.actor"
SESSION = "securemail.session"
