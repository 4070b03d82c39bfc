"""The two kinds of error the command line distinguishes.

`BadInput` is the user's to fix (a path, a value, a flag): the CLI prints its
one-line message and exits with status 2. Anything else is llmopt's failure:
one line and status 1 (with the traceback when LLMOPT_DEBUG=1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BadInput(ValueError):
    """A user-supplied value is wrong; the message names the value."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' if none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
