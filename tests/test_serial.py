"""The multi-device lock's log and summary (tests/_serial.py): the suite's serial chain."""

import json
import os
import threading
import time

import _serial


def test_summary_totals_and_orders_the_holders():
    records = [("a.py::t (setup)", 1.0, 10.0), ("b.py::u (call)", 0.0, 4.0),
               ("a.py::t (setup)", 2.0, 5.0), ("c.py::v (call)", 3.5, 1.0)]
    lines = ["", *(json.dumps({"test": t, "waited": w, "held": h}) for t, w, h in records)]
    out = _serial.summary(lines, top=2)
    assert out[0].startswith("multi-device lock: held 20 s in all")
    assert "waited for 6 s, 3 holders" in out[0]
    assert out[1].split() == ["15.0", "s", "held,", "3.0", "s", "waited", "a.py::t", "(setup)"]
    assert out[2].split()[0] == "4.0" and out[2].endswith("b.py::u (call)")
    assert len(out) == 3
    assert _serial.summary([]) == []


def test_holds_are_logged_with_their_wait(tmp_path, monkeypatch):
    """Two threads take the lock in turn: the second waits about as long as the first holds."""
    log = tmp_path / "lock.jsonl"
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", f"selftest{os.getpid()}")
    monkeypatch.setenv(_serial.LOG_ENV, str(log))
    first_in = threading.Event()

    def hold(seconds, signal=None):
        with _serial.multidevice():
            if signal:
                signal.set()
            time.sleep(seconds)

    a = threading.Thread(target=hold, args=(0.3, first_in))
    a.start()
    first_in.wait()
    hold(0.0)
    a.join()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 2
    assert rows[0]["held"] >= 0.3 and rows[0]["waited"] < 0.2
    assert rows[1]["waited"] >= 0.2  # waited for the first holder's 0.3 s
    assert all(r["test"].startswith("tests/test_serial.py::") for r in rows)
