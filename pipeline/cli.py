"""Shared command-line plumbing: every stage module's ``main`` goes through :func:`run`.

A stage CLI prints progress to stderr (the rule redirects it to its log file) and turns a
:class:`~pipeline.io.PipelineError` into one clear line and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Callable, Sequence

from pipeline.io import PipelineError

log = logging.getLogger("pipeline")


def run(build_parser: Callable[[], argparse.ArgumentParser],
        body: Callable[[argparse.Namespace], None],
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``body``; return the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        stream=sys.stderr, force=True)
    try:
        body(args)
    except PipelineError as err:
        return _fail(str(err))
    except OSError as err:
        if err.errno not in _STORAGE_ERRORS:
            raise
        where = err.filename or "output"
        return _fail(f"{where}: cannot write ({err.strerror}); free space or fix permissions, then rerun")
    return 0


# Errors of the results directory itself (full disk, no permission, read-only): worth one clear line.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _fail(message: str) -> int:
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    return 1


def progress(iterable, total: int | None = None, desc: str = ""):
    """tqdm progress on stderr, readable in a log file (no carriage-return spam when not a tty)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, mininterval=2.0 if not sys.stderr.isatty()
                else 0.1, dynamic_ncols=True)
