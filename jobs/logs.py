"""Logging set-up shared by the process entry points."""

from __future__ import annotations

import logging
import os


def setup_logging(process: str) -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s {process}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    # botocore logs every retry and credential lookup at INFO.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("aiobotocore").setLevel(logging.WARNING)
