"""Figures rendered in memory: matplotlib without a display, and a finished figure as PNG bytes.

Every figure of the project is drawn with these two, so that a command renders all of its figures
before it writes anything (src.rundir.atomic), and no figure needs a display.
"""

from __future__ import annotations

import io


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported here: most commands draw nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: float | None = None) -> bytes:
    """`fig` as PNG bytes (at `dpi`, else the figure's own), and the figure closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **({} if dpi is None else {"dpi": dpi}))
    pyplot().close(fig)
    return buffer.getvalue()
