"""``python -m delayline``: the CLI."""

from delayline.cli import main

main()
