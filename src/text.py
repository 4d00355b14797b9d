"""Text that comes from the user (config names, run directory names) as the reports show it.

    shown(text)      a str that encodes as UTF-8 whatever the name held: bytes of a directory name that
                     are not UTF-8 (Python keeps them as lone surrogates) become visible `\\xNN` escapes
    plain_png(fig)   a figure's PNG bytes with every text drawn as it is written: matplotlib would
                     read `$...$` in a config name as mathtext and fail (or typeset it), after the
                     whole computation had run
"""

from __future__ import annotations

import contextlib
import os


def shown(text) -> str:
    """`text` safe to print and to write as UTF-8: undecodable bytes of a name become `\\xNN` escapes."""
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace") if _fs_surrogates(text) else \
            text.encode("utf-8", "backslashreplace").decode("utf-8")


def _fs_surrogates(text: str) -> bool:
    try:
        os.fsencode(text)
        return True
    except UnicodeEncodeError:
        return False


@contextlib.contextmanager
def plain_text():
    """Figures made inside draw every text as written (matplotlib's text.parse_math off), so that
    laying them out (tight_layout, legends) never parses a `$` of a name as mathtext."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        yield


def plain_png(fig, dpi: float | None = None) -> bytes:
    """src.plotting.png_bytes, every text of the figure (titles, labels, legends) set as plain text."""
    from matplotlib.text import Text

    from src.plotting import png_bytes

    for artist in fig.findobj(Text):
        artist.set_text(shown(artist.get_text()))
        artist.set_parse_math(False)
        artist.set_usetex(False)
    return png_bytes(fig, dpi=dpi)
