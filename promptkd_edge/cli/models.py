"""`pkd models`: the open_clip architectures and pretrained tags there are, and which are student families."""

from __future__ import annotations

from typing import Annotated

import typer

from promptkd_edge.cli.common import app, console, errors_to_exit, print_json, require
from promptkd_edge.utils.text import visible

MODELS_EXAMPLES = "[bold]Examples[/bold]\n\n  pkd models\n  pkd models --filter ViT-L --json\n"


@app.command(epilog=MODELS_EXAMPLES)
@errors_to_exit
def models(
    filter: Annotated[str, typer.Option("--filter", help="Only architectures containing this text.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON on stdout.")] = False,
) -> None:
    """List open_clip architectures (including the package's tiny ones): their pretrained tags and, as a student,
    their tower family and the adaptation it gets (none: not usable as a student)."""
    require("models", "train")
    import open_clip

    from promptkd_edge.models.openclip import list_architectures
    from promptkd_edge.models.towers import family_of, supported_families

    families = supported_families()
    rows = {}
    for arch in (a for a in list_architectures() if filter in a):
        family = family_of(arch)
        rows[arch] = {"tags": open_clip.list_pretrained_tags_by_model(arch),
                      "family": family if family in families else None}
    if as_json:
        print_json(rows)
        return
    from rich.text import Text

    for family, adaptation in families.items():
        console().print(Text(f"{family}: ", style="bold") + Text(adaptation), highlight=False)
    console().print()
    for arch, row in rows.items():  # Text, not markup: names are printed as they are
        tags = row["tags"]
        console().print(Text(visible(arch), style="bold") + Text(f" [{row['family'] or 'no student adaptation'}]")
                        + Text(f": {visible(', '.join(tags))}" if tags else ""), highlight=False)
