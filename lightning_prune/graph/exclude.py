"""Module-path patterns for ``exclude=``."""

from __future__ import annotations

from fnmatch import fnmatch


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``path`` matches a pattern: ``fnmatch`` syntax, and a prefix covers submodules.

    Example:
        >>> matches("decoder.blocks.0.conv", ("decoder",)), matches("encoder.conv", ("dec*",))
        (True, False)
    """
    return any(fnmatch(path, pat) or path == pat or path.startswith(pat + ".") for pat in patterns)
