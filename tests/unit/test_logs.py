"""The Python side's log lines: one event a line, whatever a filter's
message holds."""

import logging

from pyworker.logs import OneLineFormatter


def line(message):
    record = logging.LogRecord(
        "pyworker.filter", logging.WARNING, __file__, 1, message, (), None
    )
    return OneLineFormatter("%(levelname)s %(message)s").format(record)


def test_a_traceback_is_folded_into_one_line():
    assert line("one\ntwo") == "WARNING one | two"


def test_control_bytes_are_escaped():
    forged = "x\r\n2030/01/01 00:00:00 [emerg] forged\x1b[2J\x07\x00\x7f\t"
    out = line(forged)
    assert out == (
        "WARNING x\\x0d | 2030/01/01 00:00:00 [emerg] forged"
        "\\x1b[2J\\x07\\x00\\x7f\\x09"
    )
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in out)


def test_text_is_kept():
    assert (
        line('caf\u00e9 \\ "quoted" 100%')
        == 'WARNING caf\u00e9 \\ "quoted" 100%'
    )
