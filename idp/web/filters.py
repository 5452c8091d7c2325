"""Template filters: times in words, with the exact time kept for hover."""

from __future__ import annotations

from datetime import datetime


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


def register(app) -> None:
    app.add_template_filter(relative, "relative")
    app.add_template_filter(exact, "exact")
