"""Placeholder until the module's owner writes it (work in progress, not a deliverable)."""

import typer


def register(app: typer.Typer) -> None:
    pass
