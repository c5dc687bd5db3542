"""``python -m crashchat.cli ...``: the same command line as the ``crashchat`` console script."""

from crashchat.cli import main

main()
