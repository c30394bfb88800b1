"""The help formatter every command's parser uses: each option's default said once, and only where it informs."""

from __future__ import annotations

import argparse
import re

__all__ = ["HelpFormatter", "mentions_default"]

_DEFAULT = re.compile(r"\bdefault\b", re.IGNORECASE)


def mentions_default(text: str) -> bool:
    """True when a help text already says its default (``default 8``, ``(default: the packaged model)``)."""
    return bool(_DEFAULT.search(text))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` without its noise.

    ``(default: X)`` is added to an option's help only when the help does not say its default itself (no default
    printed twice), the option takes a value (a switch such as ``--no-crop`` says what it turns on or off: never
    ``(default: True)``), and there is a default to show (``None`` and empty lists mean "not given", which the
    help text explains where it matters).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.nargs == 0 or "%(default)" in text or mentions_default(text) or default is None
                or default is argparse.SUPPRESS or default == [] or default == ""):
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text  # a required positional has no default
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
