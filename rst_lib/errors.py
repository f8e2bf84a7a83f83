"""Errors and value checks shared by every layer (no project imports: the bottom layer)."""
from __future__ import annotations

import difflib
import sys
from fractions import Fraction
from typing import Iterable


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A setting that runs but is probably not what was meant: one line on stderr, once per
    process (a run validates its parameters more than once)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr)


class ConfigError(ValueError):
    """A parameter has a bad name, type or value. Raised before any compute."""

    def _render_traceback_(self) -> list[str]:
        # IPython (JupyterLab, papermill) shows this instead of a traceback: a user's mistake
        # is one line there as in the CLI; the error still fails the cell (and a batch run).
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a near miss among ``options``, else ''."""
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(param: str, value, allowed: Iterable) -> None:
    """``value`` is one of ``allowed`` (true / false written as in YAML)."""
    allowed = list(allowed)
    if value not in allowed or isinstance(value, bool) != any(
            isinstance(a, bool) and a == value for a in allowed):
        shown = [str(a).lower() if isinstance(a, bool) else str(a) for a in allowed]
        raise ConfigError(f"{param}={value!r} is invalid{did_you_mean(value, shown)}: valid "
                          f"choices are {', '.join(shown)}")


def check_keep_ratio(value, name: str = "keep_ratio") -> None:
    """THE keep-ratio rule: a fraction of the weights KEPT, in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(f"{name}={value!r} is invalid: it must be in (0, 1] (the fraction of "
                          "weights KEPT; RBRN's --prune-rate 0.01 is 0.01)")


def parse_number(param: str, value) -> float:
    """Accept 0.03, 8, or a fraction string such as '8/255' (how papers write eps)."""
    if isinstance(value, bool):
        raise ConfigError(f"{param}={value!r} is invalid: expected a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{param}={value!r} is invalid: expected a number or a fraction like '8/255'")
