"""smartbin edge daemon: recognise an item on the tray and sort it into a bin."""

__version__ = "0.1.0"
