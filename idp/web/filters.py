"""Template filters: times and places in words, with the exact time kept for hover."""

from __future__ import annotations

from datetime import datetime

from ..devices import LOCAL_NETWORK, THIS_COMPUTER, UNKNOWN_LOCATION


def _unit(seconds: int) -> str:
    for size, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = seconds // size
            return f"{count} {name}{'s' if count != 1 else ''}"
    return "moments" if seconds < 10 else f"{seconds} seconds"


def relative(when: datetime, now: datetime) -> str:
    """"5 minutes ago" / "in 2 hours" / "just now"."""
    seconds = int((now - when).total_seconds())
    if abs(seconds) < 10:
        return "just now"
    if seconds > 0:
        return f"{_unit(seconds)} ago"
    return f"in {_unit(-seconds)}"


def exact(when: datetime) -> str:
    """UTC text; a small script rewrites it into the viewer's time zone."""
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def from_place(location: str) -> str:
    """"from Paris, France" / "from this computer" / "from your local network": a
    session's location as the end of a sentence ("… signed in from this computer")."""
    if location == THIS_COMPUTER:
        return "from this computer"
    if location == LOCAL_NETWORK:
        return "from your local network"
    if location in (UNKNOWN_LOCATION, ""):
        return "from an unknown place"
    return f"from {location}"


def register(app) -> None:
    app.add_template_filter(relative, "relative")
    app.add_template_filter(exact, "exact")
    app.add_template_filter(from_place, "from_place")
