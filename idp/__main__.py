"""``python -m idp``: the same commands as ``idp`` (how ``idp serve`` starts its worker)."""

from idp.cli import cli

cli()
