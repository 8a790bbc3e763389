"""Errors of the consortium deployment: every message is one actionable line."""

from __future__ import annotations

from fedrisk.errors import UserError


class ConsortiumError(UserError):
    """Provisioning or running the consortium failed; the message is one line."""


class RunFailedError(ConsortiumError):
    """A training run submitted with ``flwr run`` ended in a state other than completed."""
