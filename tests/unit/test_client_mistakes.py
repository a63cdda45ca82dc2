"""A client's metadata that is not UTF-8 is logged as the client's mistake: one WARNING line."""

from __future__ import annotations

import logging

from jobs.logs import ClientMistakes


def test_grpcs_error_for_metadata_that_is_not_utf8_becomes_one_warning_line(caplog) -> None:
    logger = logging.getLogger("test.grpc._cython.cygrpc")
    logger.addFilter(ClientMistakes())
    try:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    except UnicodeDecodeError:
        logger.exception("Invalid encoding on %s", b"\xff\xfe")  # what gRPC logs
    logger.error("something else broke")
    first, second = caplog.records
    assert (first.levelname, first.exc_info) == ("WARNING", None)
    assert first.getMessage() == "a client sent metadata that is not UTF-8: b'\\xff\\xfe' (served as it is)"
    assert second.levelname == "ERROR", "other errors stay errors"
