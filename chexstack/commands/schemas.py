"""`chexstack schemas export`: JSON Schema of every message contract."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chexstack.settings import option

schemas_app = typer.Typer(help="Message contracts.", no_args_is_help=True)


@schemas_app.command("export")
def export(
    out: Annotated[Path, option("--out", "Output directory.", env=False)] = Path("docs/schemas"),
) -> None:
    """Write <topic>.schema.json for every topic."""
    from chexstack.messages import export_json_schemas

    for path in export_json_schemas(out):
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.add_typer(schemas_app, name="schemas")
