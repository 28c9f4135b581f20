"""One line about a failure, from a longer error text (a traceback, a crashed job's report)."""

__all__ = ["error_summary"]


def error_summary(text: str) -> str:
    """The one line that says why something failed, from a longer error text.

    A Python traceback gives its exception line (the last line that is not source context). Any
    other text gives its first line: a crash report of a trial launcher starts with the cause
    (``job 12 ended without a result (process ended)``), followed by the end of the job's log,
    whose last line is usually unrelated (a warning, a progress line).

    Returns:
        The line, stripped; ``""`` for an empty text.
    """
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if not lines[0].startswith("Traceback"):
        return lines[0]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~", "-")):
            return line
    return lines[-1]
