"""The notebook's HTML comes from Jinja2 templates (chexstack/notebook/templates) with autoescape on.

Every value a template prints is escaped unless it is already markup (`markupsafe.Markup`), so data
from the hub, Kafka or a file name can never inject HTML; the Python side only decides what to show.
"""

from __future__ import annotations

from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined

DASH: Final = "\u2013"  # what an absent value shows as


def _dash(value: object) -> object:
    return DASH if value is None else value


_ENV = Environment(
    loader=PackageLoader("chexstack.notebook", "templates"),
    autoescape=True,
    undefined=StrictUndefined,  # a misspelt name fails the render instead of printing nothing
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["dash"] = _dash
_ENV.globals["DASH"] = DASH


def render(template: str, /, **context: Any) -> str:
    """`template` (a path under chexstack/notebook/templates) rendered with `context`."""
    return _ENV.get_template(template).render(**context)
