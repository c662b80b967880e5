"""User text in Markdown artifacts, shown as the text it is.

File names, folders and failure reasons come from users' files and from exceptions: a name
like ``clip_[draft]*final*.mp4`` or ``<img src=x onerror=...>.mp4`` would otherwise turn into
a link, emphasis or HTML in the ``run-summary`` artifact, and a ``|`` or a line break would
cut its table row. :func:`text` backslash-escapes every ASCII punctuation character, which
CommonMark (and GitHub's tables, that Prefect's UI renders) read as that character; :func:`code`
shows a path in a code span.

Examples:
    >>> print(text("clip_[draft]*final*|<b>.mp4"))
    clip\\_\\[draft\\]\\*final\\*\\|\\<b\\>\\.mp4
    >>> print(code("/data/run `1`/out", in_table=True))
    `` /data/run `1`/out ``
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_BACKTICKS = re.compile(r"`+")


def _one_line(value: object) -> str:
    """``value`` as text on one line: a line break would end a list item or a table row."""
    return " ".join(str(value).splitlines())


def text(value: object) -> str:
    """``value`` as literal Markdown text on one line (module docstring)."""
    return _PUNCTUATION.sub(r"\\\1", _one_line(value))


def code(value: object, in_table: bool = False) -> str:
    """``value`` in a code span on one line, whatever backticks it holds.

    The fence is one backtick longer than the longest run inside, padded with a space when
    the text starts or ends with a backtick (CommonMark). In a table cell a ``|`` is escaped,
    which GitHub's tables read as ``|`` even inside a code span.
    """
    line = _one_line(value)
    if in_table:
        line = line.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(line)), default=0) + 1)
    pad = " " if line.startswith("`") or line.endswith("`") or fence != "`" else ""
    return f"{fence}{pad}{line}{pad}{fence}"
