"""The operator dashboard (placeholder until the HTML pages land)."""

from __future__ import annotations

from server.http import Route

ROUTES: tuple[Route, ...] = ()
