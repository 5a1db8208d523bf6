"""``python -m g3.cli`` (e.g. ``accelerate launch -m g3.cli train``)."""

from g3.cli import main

main()
