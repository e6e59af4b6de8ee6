"""The ``delayline`` command: serve, migrate, and talk to a running service.

One module per group of commands (:mod:`.admin`, :mod:`.events`, :mod:`.tail`, :mod:`.keys`),
what they share in :mod:`.common`, the app assembled in :mod:`.app`.
"""

from delayline.cli.app import app, main
from delayline.cli.tail import readable_body

__all__ = ["app", "main", "readable_body"]
