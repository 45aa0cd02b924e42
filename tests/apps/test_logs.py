"""Workers' JSON logs (apps/logs.py): one object per line, whatever the message holds."""

from __future__ import annotations

import io
import json
import logging
import logging.config

from vigil.apps.logs import logging_config


def test_each_record_is_one_json_object_on_one_line_tracebacks_included(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    saved, level = logging.root.handlers[:], logging.root.level
    logging.config.dictConfig(logging_config("json", "INFO"))
    log = logging.getLogger("vigil.test")
    try:
        log.info('two\nlines, a quote " and 账户 %s', {"k": 1})
        log.debug("below the level: not written")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it raised")
    finally:  # the root logger as it was (pytest's own handlers on it)
        logging.root.handlers[:] = saved
        logging.root.setLevel(level)
    lines = stream.getvalue().splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(docs) == 2
    assert docs[0]["message"] == "two\nlines, a quote \" and 账户 {'k': 1}"
    assert docs[0]["level"] == "INFO" and docs[0]["logger"] == "vigil.test"
    assert docs[0]["ts"].endswith("+00:00") and "T" in docs[0]["ts"]
    assert docs[1]["level"] == "ERROR" and "ValueError: boom" in docs[1]["exception"]


def test_text_is_left_to_faust():
    assert logging_config("text", "INFO") is None
