"""The risks a policy can accept: one registry of names for every refusal that has an opt-out.

Where the engine refuses something that an administrator may knowingly want (an unpinned
plugin run in-process, a kernel layer this machine lacks), the refusal names a risk and the
policy opts out with ``accept <risk>`` inside ``defaults { }`` or ``plugin "<name>" { }``.
Each name is one :class:`Risk` in :data:`RISKS`; code that adds a refusal adds one entry here
and tests ``name in effective.accepted_risks``. There is no blanket opt-out: every accepted
risk is named.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["RISKS", "UNPINNED_INPROCESS", "Risk", "risk_names"]


@dataclass(frozen=True, slots=True)
class Risk:
    """A refusal a policy may opt out of: what is refused, and what accepting it gives up."""

    name: str
    refusal: str
    gives_up: str


def _registry(*risks: Risk) -> Mapping[str, Risk]:
    return MappingProxyType({risk.name: risk for risk in risks})


#: ``isolation inprocess`` for a plugin without a matching ``trust`` pin.
UNPINNED_INPROCESS = "unpinned-inprocess"

#: Every risk name a policy may accept, in the order they are documented.
RISKS: Mapping[str, Risk] = _registry(
    Risk(
        UNPINNED_INPROCESS,
        "a plugin without a matching `trust` pin is not loaded with `isolation inprocess`",
        "the plugin's code runs inside the host with the host's privileges, and nothing "
        "checks that it is the code that was reviewed",
    ),
)


def risk_names() -> tuple[str, ...]:
    """Every known risk name, sorted."""
    return tuple(sorted(RISKS))
