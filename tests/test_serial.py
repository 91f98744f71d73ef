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
    """Two threads take the lock in turn: the second waits about as long as the first holds
    after the second has asked for it."""
    log = tmp_path / "lock.jsonl"
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", f"selftest{os.getpid()}")
    monkeypatch.setattr(_serial.tempfile, "tempdir", str(tmp_path))  # the lock file
    monkeypatch.setenv(_serial.LOG_ENV, str(log))
    first_in, second_asks = threading.Event(), threading.Event()

    def first():
        with _serial.multidevice():
            first_in.set()
            second_asks.wait(timeout=60)
            time.sleep(0.5)  # the second thread is waiting for the lock meanwhile

    a = threading.Thread(target=first)
    a.start()
    first_in.wait(timeout=60)
    second_asks.set()
    with _serial.multidevice():
        pass
    a.join()
    # Each holder logs after it lets go, so the two lines may come in either order.
    rows = sorted((json.loads(line) for line in log.read_text().splitlines()),
                  key=lambda r: r["held"])
    assert len(rows) == 2
    assert rows[1]["held"] >= 0.5
    assert rows[0]["held"] < rows[1]["held"] and rows[0]["waited"] >= 0.25
    assert all(r["test"].startswith("tests/test_serial.py::") for r in rows)


def test_one_device_takes_no_lock(tmp_path, monkeypatch):
    """A one-device process runs while another test holds the lock, and logs no hold."""
    log = tmp_path / "lock.jsonl"
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", f"selftest1d{os.getpid()}")
    monkeypatch.setenv(_serial.LOG_ENV, str(log))
    monkeypatch.setattr(_serial.tempfile, "tempdir", str(tmp_path))
    inside, done = threading.Event(), threading.Event()

    def holder():
        with _serial.multidevice():
            inside.set()
            done.wait(timeout=60)

    a = threading.Thread(target=holder)
    a.start()
    inside.wait(timeout=60)
    try:
        proc = _serial.run(["true"], devices=1, timeout=30)  # would block under the lock
    finally:
        done.set()
        a.join()
    assert proc.returncode == 0
    assert len(log.read_text().splitlines()) == 1  # the holder's line only


def test_the_serial_worker_takes_the_chain_in_order_and_the_other_the_rest():
    from _schedule import SERIAL_MODULES, pick

    queue = ["tests/test_api.py", "tests/test_capacity.py", "tests/test_resume_devices.py",
             "tests/test_restore.py", "tests/test_data.py"]
    assert pick(queue, serial_worker=True) == "tests/test_resume_devices.py"
    assert pick(queue, serial_worker=False) == "tests/test_capacity.py"
    # Nothing of its own kind left: the serial worker takes the next other module, the
    # other worker the serial module from the end of the list.
    assert pick(["tests/test_data.py", "tests/test_models.py"], True) == "tests/test_data.py"
    assert pick(["tests/test_api.py", "tests/test_restore.py", "tests/test_parallel.py"],
                False) == "tests/test_restore.py"
    assert SERIAL_MODULES.index("test_restore.py") > SERIAL_MODULES.index("test_api.py")


def test_every_module_that_takes_the_lock_is_on_the_serial_list():
    """A module that launches multi-device processes, and is missing from the list, would
    be handed to either worker again (tests/_schedule.py)."""
    from _schedule import SERIAL_MODULES

    here = os.path.dirname(os.path.abspath(__file__))
    takers = set()
    for name in os.listdir(here):
        if name.startswith("test_") and name.endswith(".py") and name != "test_serial.py":
            with open(os.path.join(here, name)) as f:
                source = f.read()
            if "_serial.run(" in source or "multidevice()" in source:
                takers.add(name)
    assert takers == set(SERIAL_MODULES)
