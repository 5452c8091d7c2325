"""``python -m idp``: the same commands as ``idp`` (how ``idp serve`` starts its worker,
and itself afresh with multi-process metrics)."""

from idp.cli import main

main()
