"""The workbench's pages over HTTP (a real `parcel-stream workbench serve` on SQLite): bad
input gets a page with a message and never a stack trace; roles see and do what they may;
supervisors assign and reopen; views of personal data are audited; metrics are served."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from parcel_stream.adapters.workbench.cases import CaseStore
from parcel_stream.adapters.workbench.service import PORT_FILE, open_store
from parcel_stream.settings import Settings
from tests.unit.test_observability import NAME, queries

EXAMPLE = json.loads(Path("schemas/examples/hold.v1.json").read_text())
PASSWORD = "correct horse battery"


def hold(pid: str, hub: str) -> bytes:
    manifest = dict(EXAMPLE["manifest"], parcel_id=pid, hub=hub)
    return json.dumps(dict(EXAMPLE, parcel_id=pid, hub=hub, manifest=manifest)).encode()


class Browser:
    """One HTTP client with cookies (what a browser keeps between pages)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []  # as sent, with their attributes

    def go(self, method: str, path: str, form: dict[str, str] | None = None,
           raw: bytes | None = None, ctype: str = "") -> tuple[int, str]:  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = raw
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if ctype:
            headers["Content-Type"] = ctype
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        for k, v in resp.getheaders():
            if k.lower() == "set-cookie":
                self.set_cookies.append(v)
                name, _, rest = v.partition("=")
                self.cookies[name] = rest.split(";")[0]
        conn.close()
        assert "Traceback" not in text and 'File "' not in text, text[:2000]
        return resp.status, text

    def sign_in(self, user: str) -> None:
        _s, page = self.go("GET", "/sign-in")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        status, _ = self.go("POST", "/sign-in", {"csrf": csrf.group(1), "username": user,
                                                 "password": PASSWORD})  # fmt: skip
        assert status == 303

    def csrf(self, path: str) -> str:
        _s, page = self.go("GET", path)
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found is not None
        return found.group(1)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, CaseStore]]:
    s = Settings(workbench_db=f"sqlite:///{tmp_path / 'wb.db'}", workbench_port=0,
                 log_level="warning")  # fmt: skip
    store, users = open_store(s)
    users.add("ann", PASSWORD, "officer", ["CVG"])
    users.add("sue", PASSWORD, "supervisor", [])
    users.add("ana", PASSWORD, "analyst", [])
    users.add("olaf", PASSWORD, "officer", ["LEJ"])
    store.ingest([hold("P1", "CVG"), hold("P2", "CVG"), hold("L1", "LEJ")])
    log = tmp_path / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parcel_stream.cli", "workbench", "serve", "--no-streams",
             "--state-dir", str(tmp_path)], env={**os.environ, **s.as_env()}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / PORT_FILE).exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the workbench did not start"
            time.sleep(0.1)
        yield int((tmp_path / PORT_FILE).read_text()), store
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "Alex Smith" not in log.read_text()  # no personal data in the log


def test_bad_input_gets_a_message_never_a_stack_trace(served: tuple[int, CaseStore]) -> None:
    port, store = served
    b = Browser(port)
    assert b.go("GET", "/queue")[0] == 303  # signed out: to the sign-in page
    b.sign_in("ann")
    status, page = b.go("GET", "/parcels/NOPE")
    assert status == 404 and "No held parcel" in page
    status, page = b.go("GET", "/no/such/page")
    assert status == 404 and "No such page" in page
    status, page = b.go("GET", "/queue?sort=sideways")
    assert status == 400 and "Unknown sort" in page
    status, page = b.go("GET", "/queue?after=garbage")
    assert status == 400 and "page link is not valid" in page
    csrf = b.csrf("/parcels/P1")
    form = {"csrf": csrf, "revision": "0", "outcome": "seized", "finding": "counterfeit"}
    for bad, message in (
        ({"outcome": ""}, "choose the outcome"),
        ({"finding": "aliens"}, "unknown finding"),
        ({"outcome": "clean"}, "a clean examination has no finding"),
        ({"recovered_usd": "lots"}, "is not a number"),
        ({"recovered_usd": "-5"}, "a number of USD from 0"),
        ({"recovered_usd": "nan"}, "a number of USD from 0"),
        ({"notes": "x" * 2001}, "at most 2000 characters"),
        ({"revision": "x"}, "the form is incomplete"),
    ):
        status, page = b.go("POST", "/parcels/P1/outcome", {**form, **bad})
        assert status == 409 and message in page, (bad, status)
    status, page = b.go("POST", "/parcels/P1/outcome", raw=b"--x\r\n\xff\xfe",
                        ctype="multipart/form-data; boundary=x")  # fmt: skip
    assert status in (400, 403) and "Traceback" not in page
    assert b.go("POST", "/parcels/P1/outcome", {**form, "recovered_usd": "12.5"})[0] == 303
    store.mark_sent(["P1/0"])  # the sender's part: the case closes
    status, page = b.go("POST", "/parcels/P1/outcome", {**form, "revision": "0"})
    assert status == 303  # the same form again: recorded once, nothing new
    assert len(store.outcomes_of("P1")) == 1
    status, page = b.go("POST", "/parcels/P1/claim", {"csrf": csrf})
    assert status == 409 and "the case is closed" in page


def test_roles_hubs_assignment_reopen_and_audit(served: tuple[int, CaseStore]) -> None:
    port, store = served
    olaf = Browser(port)
    olaf.sign_in("olaf")
    status, page = olaf.go("GET", "/parcels/P1")  # another hub's parcel
    assert status == 404
    status, page = olaf.go("GET", "/queue?hub=CVG")
    assert status == 403 and "no access to hub CVG" in page
    status, page = olaf.go("GET", "/queue")
    assert "L1" in page and "P1" not in page

    ana = Browser(port)
    ana.sign_in("ana")
    status, page = ana.go("GET", "/parcels/P2")
    assert status == 200 and "Alex Smith" not in page and "consignee-hidden" in page
    assert 'id="record"' not in page and 'id="claim"' not in page
    status, page = ana.go("POST", "/parcels/P2/claim", {"csrf": ana.csrf("/parcels/P2")})
    assert status == 403 and "You cannot do that" in page

    ann = Browser(port)
    ann.sign_in("ann")
    session = next(c for c in ann.set_cookies if c.startswith("ps_session="))
    assert "HttpOnly" in session and "SameSite=lax" in session and "Secure" not in session
    status, page = ann.go("GET", "/queue?lane=sideways")
    assert status == 400 and "Unknown lane" in page
    status, page = ann.go("GET", "/queue?lane=hold&selection=risk&reason=high_risk_hs")
    assert status == 200 and "P1" in page and "P2" in page
    status, page = ann.go("GET", "/parcels/P2")
    assert "Alex Smith" in page
    viewed = [a for a in store.audit_log("P2") if a["action"] == "viewed personal data"]
    assert [a["username"] for a in viewed] == ["ann"]  # the analyst's view showed none

    sue = Browser(port)
    sue.sign_in("sue")
    csrf = sue.csrf("/parcels/P2")
    assert sue.go("POST", "/parcels/P2/assign", {"csrf": csrf, "to": "olaf"})[0] == 409
    assert sue.go("POST", "/parcels/P2/assign", {"csrf": csrf, "to": "ann"})[0] == 303
    case = store.case("P2")
    assert case is not None and case.assignee == "ann" and case.status == "claimed"
    form = {"csrf": ann.csrf("/parcels/P2"), "revision": "0", "outcome": "violation",
            "finding": "undervaluation", "recovered_usd": "80"}  # fmt: skip
    assert ann.go("POST", "/parcels/P2/outcome", form)[0] == 303
    status, page = sue.go("POST", "/parcels/P2/reopen", {"csrf": csrf, "reason": ""})
    assert status == 409 and "say why" in page
    assert sue.go("POST", "/parcels/P2/reopen", {"csrf": csrf, "reason": "wrong value"})[0] == 303
    status, page = ann.go("POST", "/parcels/P2/outcome", form)  # the form from before
    assert status == 409 and "reopened after this form was shown" in page
    assert ann.go("POST", "/parcels/P2/outcome", {**form, "revision": "1"})[0] == 303
    assert [o.exam_id for o in store.outcomes_of("P2")] == ["P2/0", "P2/1"]
    actions = [a["action"] for a in store.audit_log("P2")]
    for done in ("assigned", "recorded outcome", "reopened"):
        assert done in actions

    assert Browser(port).go("GET", "/readyz") == (200, "ready\n")
    status, metrics = Browser(port).go("GET", "/metrics")
    assert status == 200
    # every workbench series the dashboard and the alerts query is on the live page
    live = {line.split("{", 1)[0].split(" ", 1)[0] for line in metrics.splitlines()
            if line and not line.startswith("#")}  # fmt: skip
    wanted = {name for _where, expr in queries() for name, _m in NAME.findall(expr)
              if name.startswith("parcel_stream_workbench_")}  # fmt: skip
    assert len(wanted) >= 5 and wanted - live == set()
    assert 'parcel_stream_workbench_open_holds{hub="CVG"} 1.0' in metrics
    assert 'parcel_stream_workbench_outcomes_total{outcome="violation"} 2.0' in metrics


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "parcel_stream.cli", "workbench", *args],
                          env={**os.environ, **env}, input=stdin, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_user_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user commands, run in this process (as `parcel-stream workbench user ...`)."""
    from parcel_stream.cli import main

    def run(*args: str, stdin: str = PASSWORD + "\n") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(["workbench", *args])
        got = capsys.readouterr()
        return code, got.out, got.err

    monkeypatch.setenv("PARCEL_WORKBENCH_DB", f"sqlite:///{tmp_path / 'wb.db'}")
    code, out, err = run("user", "add", "ann", "--role", "officer", "--hubs", "CVG,LEJ")
    assert code == 0 and "added officer ann (CVG, LEJ)" in out, err
    pw = tmp_path / "pw"
    pw.write_text("supervisor password\n")
    assert run("user", "add", "sue", "--role", "supervisor", "--password-file", str(pw))[0] == 0
    for args, message in (
        (("user", "add", "bob", "--role", "officer"), "an officer needs at least one hub"),
        (("user", "add", "Bad Name!", "--role", "analyst"), "user name 'Bad Name!'"),
        (("user", "add", "ann", "--role", "analyst"), "exists already"),
        (("user", "disable", "nobody"), "no user 'nobody'"),
        (
            ("user", "add", "x1", "--role", "analyst", "--password-file", "/nonexistent"),
            "--password-file /nonexistent",
        ),
    ):
        code, _out, err = run(*args)
        assert code == 2 and message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _out, err = run("user", "add", "cy", "--role", "analyst", stdin="short\n")
    assert code == 2 and "at least 10 characters" in err
    assert run("user", "disable", "ann")[0] == 0
    listed = run("user", "list")[1].splitlines()
    assert [line.split()[0] for line in listed] == ["ann", "sue"]
    assert listed[0].split()[-1] == "disabled" and listed[1].split()[-1] == "active"
    monkeypatch.setenv("PARCEL_WORKBENCH_DB", "mysql://x")
    code, _out, err = run("user", "list")
    assert code == 2 and "PARCEL_WORKBENCH_DB" in err and "Traceback" not in err
    # and the real command line (a process of its own), once
    done = cli({"PARCEL_WORKBENCH_DB": f"sqlite:///{tmp_path / 'wb.db'}"}, "user", "list")
    assert done.returncode == 0 and done.stdout.split()[0] == "ann"


def test_the_workbench_demo_starts_everything_and_stops_it(tmp_path: Path) -> None:
    """`parcel-stream workbench demo` (what `make workbench` runs): the dev stack, a worker,
    a feed and the workbench; it prints the URL and the accounts, and leaves nothing
    running (here it stops by itself; Ctrl-C does the same)."""
    state = tmp_path / "demo"
    got = cli({}, "demo", "--parcels", "300", "--port", "0", "--state-dir", str(state),
              "--stop-after", "3")  # fmt: skip
    assert got.returncode == 0, got.stdout + got.stderr
    url = re.search(r"workbench:\s+(http://127\.0\.0\.1:\d+/)", got.stdout)
    officer = re.search(r"officer:\s+officer / (\S+)", got.stdout)
    assert url and officer and "supervisor: supervisor / " in got.stdout, got.stdout
    worker = re.search(r"worker \(pid (\d+)\)", got.stdout)
    assert worker is not None
    assert not Path(f"/proc/{worker.group(1)}").exists() or "zombie" in Path(
        f"/proc/{worker.group(1)}/status").read_text().lower()  # fmt: skip
    assert not list((state / "stack").glob("*.pid")), "a process of the demo was left running"
    conn = http.client.HTTPConnection(url.group(1)[7:-1].split(":")[0],
                                      int(url.group(1)[7:-1].split(":")[1]), timeout=2)  # fmt: skip
    with pytest.raises(OSError):
        conn.request("GET", "/healthz")
