"""The page's plan, timed in a real browser: from the click on Plan to the front fully drawn (every
point plotted, the table filled), for the default space (the form's defaults: iphone-16-pro,
exhaustive, p_front >= 0.5, 2 GB). Target: within 5 s on 2 cores.

Starts ``moeplan serve`` on a free loopback port with a scratch store, drives Debian's chromium
through chromedriver (selenium), and prints one JSON line with the median, every repeat and the
load average.

Usage: python benchmarks/page_plan.py [--repeats 5] [--memory-gb 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(folder: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    moeplan = Path(sys.executable).with_name("moeplan")
    env = {k: v for k, v in os.environ.items() if k != "MOEPLAN_API_TOKEN"}
    command = [str(moeplan), "serve", "--port", str(port), "--store", f"sqlite:///{folder / 's.sqlite'}"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/v1/health", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("error: moeplan serve did not start")


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        raise SystemExit("error: needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


DRAWN = """
const plot = document.getElementById('front-plot'), state = window.moeplanState;
if (!state.plan || !plot.data) return null;
const points = plot.data.reduce((n, t) => n + t.x.length, 0);
const rows = document.querySelectorAll('#front-table tbody tr').length;
return points === state.plan.pareto.length && rows === points ? points : null;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-gb", type=float, default=2.0)
    args = parser.parse_args()
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory() as folder:
        process, url = _serve(Path(folder))
        driver = _browser()
        seconds, points = [], 0
        try:
            driver.get(url + "/")
            for _ in range(args.repeats):
                driver.get(url + "/")
                while not driver.find_elements(By.CSS_SELECTOR, "#f-device option"):
                    time.sleep(0.05)
                driver.find_element(By.ID, "f-budget").send_keys(str(args.memory_gb))
                start = time.perf_counter()
                driver.find_element(By.ID, "submit").click()
                while not (points := driver.execute_script(DRAWN)):
                    if time.perf_counter() - start > 120:
                        raise SystemExit("error: the front was not drawn within 120 s")
                    time.sleep(0.02)
                seconds.append(time.perf_counter() - start)
        finally:
            driver.quit()
            process.kill()
            process.wait()
    print(json.dumps({
        "benchmark": "page_plan", "memory_gb": args.memory_gb, "points": points,
        "median_s": statistics.median(seconds), "runs_s": [round(s, 3) for s in seconds],
        "target_s": 5.0, "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
