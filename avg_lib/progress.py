"""Progress bars: widgets in interactive Jupyter, plain text under papermill (``AVG_PLAIN_PROGRESS=1``,
set by the runner) so the bars advance in logs; ``TQDM_DISABLE=1`` silences them (tests)."""

from __future__ import annotations

import os


def tqdm(*args, **kwargs):
    if os.environ.get("AVG_PLAIN_PROGRESS"):
        from tqdm.std import tqdm as impl

        kwargs.setdefault("mininterval", 10.0)  # a log line every 10 s, not every step
    else:
        from tqdm.auto import tqdm as impl
    if os.environ.get("TQDM_DISABLE"):
        kwargs["disable"] = True
    return impl(*args, **kwargs)
