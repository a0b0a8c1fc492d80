"""The workbench's pages with many open holds in PostgreSQL, and its holds-ingest rate.

Starts a throwaway PostgreSQL (Debian's package), ingests ``--holds`` hold records (built
from generated manifests, with reasons from the default rule set) through the case store
as the holds consumer does, then serves the pages (``parcel-stream workbench serve
--no-streams``) and times, over HTTP with one signed-in officer session:

- the queue's first page (riskiest first), a page 1,000 pages deep (keyset cursor), the
  queue sorted by age, and filtered by a reason code;
- parcel pages of random held parcels;
- the peer in the same run: ``/healthz`` (the same server and framework, no database).

    python benchmarks/workbench_pages.py [--holds 100000] [--requests 200] [--screenshots DIR]

With ``--screenshots DIR`` it also saves the queue and a parcel page as PNG (headless
Chromium), for the docs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from parcel_stream.adapters.workbench import devpg
from parcel_stream.adapters.workbench.service import PORT_FILE, open_store
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings

PASSWORD = "benchmark password"


def holds(n: int, seed: int = 5) -> list[bytes]:
    """``n`` hold records around generated manifests (their reasons from the rule set)."""
    rules = [r for r in default_ruleset().rules if r.enabled]
    rng = random.Random(seed)
    example = json.loads(Path("schemas/examples/hold.v1.json").read_text())
    t0 = int(time.time() * 1000) - 6 * 3_600_000
    out = []
    for i, (doc, _label) in enumerate(generate(FeedConfig(parcels=n, seed=seed))):
        fired = rng.sample(rules, rng.randint(1, 4))
        score = min(100.0, sum(r.weight for r in fired))
        hold = dict(example, parcel_id=doc["parcel_id"], shipper_id=doc["shipper"]["id"],
                    hub=doc["hub"], score=score, probability=round(rng.betavariate(2, 5), 4),
                    reasons=[{"code": r.code, "text": r.text, "rule_weight": r.weight}
                             for r in fired],
                    selection="risk" if i % 20 else "random",
                    decision_ts_ms=t0 + i * 200, event_ts_ms=t0 + i * 200 - 5000,
                    source=f"parcel-manifests/{i % 4}/{i}", manifest=doc)  # fmt: skip
        out.append(json.dumps(hold).encode())
    return out


class Client:
    """One keep-alive HTTP connection with the officer's session cookie."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, body: dict[str, str] | None = None
    ) -> tuple[int, str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        data = None
        if body is not None:
            data = urllib.parse.urlencode(body)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, data, headers)
        resp = self.conn.getresponse()
        text = resp.read().decode()
        for k, v in resp.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                self.cookies[name] = rest.split(";")[0]
        return resp.status, text

    def sign_in(self, user: str, password: str) -> None:
        _s, page = self.request("GET", "/sign-in")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        status, _ = self.request("POST", "/sign-in", {"csrf": csrf.group(1), "username": user,
                                                      "password": password})  # fmt: skip
        if status != 303:
            raise SystemExit(f"sign-in failed: HTTP {status}")


def timed(client: Client, paths: list[str]) -> list[float]:
    out = []
    for path in paths:
        t = time.perf_counter()
        status, _ = client.request("GET", path)
        out.append((time.perf_counter() - t) * 1000)
        if status != 200:
            raise SystemExit(f"GET {path}: HTTP {status}")
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--holds", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--screenshots", default="", help="save PNGs of the pages to this dir")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    records = holds(args.holds)
    pg = devpg.start()
    tmp = Path(tempfile.mkdtemp(prefix="parcel-stream-wb-bench-"))
    proc = None
    try:
        s = Settings(workbench_db=pg.url, workbench_port=0, log_level="warning")
        store, users = open_store(s)
        users.add("officer", PASSWORD, "officer", ["JFK-ISC", "ORD-ISC", "LAX-ISC",
                                                   "CVG-DHL", "MEM-FDX"])  # fmt: skip
        t = time.perf_counter()
        for lo in range(0, len(records), 2000):  # as the holds consumer does: a poll a batch
            store.ingest(records[lo : lo + 2000])
        ingest_s = time.perf_counter() - t
        print(f"ingested {len(records):,} holds in {ingest_s:.1f} s: "
              f"{len(records) / ingest_s:,.0f} holds/s (PostgreSQL {pg.bindir.split('/')[-2]})")  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "parcel_stream.cli", "workbench", "serve", "--no-streams",
             "--state-dir", str(tmp)], env={**os.environ, **s.as_env()},
            stdout=open(tmp / "log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (tmp / PORT_FILE).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the workbench did not start: {(tmp / 'log').read_text()}")
            time.sleep(0.1)
        port = int((tmp / PORT_FILE).read_text())
        client = Client(port)
        client.sign_in("officer", PASSWORD)
        # a cursor 1,000 pages deep, walked once
        cursor, deep = "", ""
        for _ in range(1000):
            _s, page = client.request("GET", "/queue?hub=JFK-ISC" + (
                f"&after={urllib.parse.quote(cursor)}" if cursor else ""))  # fmt: skip
            m = re.search(r'after=([^"]+)"', page)
            if not m:
                break
            cursor = urllib.parse.unquote(m.group(1).replace("&amp;", "&"))
            deep = cursor
        ids = [json.loads(r)["parcel_id"] for r in random.Random(1).sample(records, args.requests)]
        n = args.requests
        runs = {
            "/healthz (peer: no database)": ["/healthz"] * n,
            "queue, first page, riskiest first": ["/queue"] * n,
            "queue of one hub, 1,000 pages deep": [
                f"/queue?hub=JFK-ISC&after={urllib.parse.quote(deep)}"
            ]
            * n,
            "queue of one hub, oldest first": ["/queue?hub=CVG-DHL&sort=age"] * n,
            "queue filtered by a reason code": ["/queue?reason=HIGH_RISK_HS"] * n,
            "parcel page (random held parcels)": [f"/parcels/{i}" for i in ids],
        }
        timed(client, ["/queue", f"/parcels/{ids[0]}"] * 5)  # warm
        print(f"\n{len(records):,} open holds in PostgreSQL; {n} requests each, one client\n")
        print(f"{'page':<40} {'p50 ms':>8} {'p95 ms':>8} {'p95 / peer p95':>15}")
        peer = 0.0
        for name, paths in runs.items():
            ms = timed(client, paths)
            p95 = pct(ms, 0.95)
            peer = peer or p95
            print(f"{name:<40} {pct(ms, 0.5):>8.1f} {p95:>8.1f} {p95 / peer:>15.1f}")
        print("\ntarget: queue and parcel pages p95 <= 200 ms with 100,000 open holds")
        if args.screenshots:
            shots(port, Path(args.screenshots), ids[0])
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
        devpg.stop(pg)


def shots(port: int, out: Path, parcel_id: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    os.environ["SE_OFFLINE"] = "true"
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1360,1000", "--hide-scrollbars"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        url = f"http://127.0.0.1:{port}"
        driver.get(url + "/sign-in")
        driver.find_element(By.ID, "username").send_keys("officer")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "sign-in").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "queue"))
        out.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out / "workbench-queue.png"))
        driver.get(f"{url}/parcels/{parcel_id}")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "reasons"))
        driver.save_screenshot(str(out / "workbench-parcel.png"))
        print(f"screenshots in {out}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
