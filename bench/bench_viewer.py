"""Benchmark: the workstation's viewer against NiiVue on a 300-slice 512×512 CT, in headless chromium.

Run ``.venv/bin/python bench/bench_viewer.py`` from the repository root (about 5-10 minutes on 2 cores).
Needs Debian's chromium (``/usr/bin/chromium``), Playwright (drives it, downloads no browser), the built
front end (``make web``) and the peer page (``bench/out/viewer-pages``, built by ``cd web && npm run
build:peer``; ``--build-peer`` runs that first).

Chromium runs headless with software WebGL2 (SwiftShader), with the flags of the browser tests
(``tests/web/conftest.py``), viewport 1400×900.

The series is the one of ``bench/bench_load.py`` (built once into ``bench/out/ct300/``, reused): the
pyradiomics lung CT interpolated to 300 slices of 512×512 (int16 once rescaled: 157,286,400 bytes).

* **Sobre**: a workspace with that series ingested (``bench/out/viewer/ws``, built once in a subprocess),
  a project and a user (``sobre users ...``, as ``tests/web/workspace.py`` does), ``sobre serve`` on a free
  loopback port. Each round: a fresh browser, log in through the login form, open
  ``/#/p/<project>/series/<key>`` and wait for the page's own ``window.__sobre.timings``: ``firstImage``
  (the middle axial slice drawn on screen while the volume streams) and ``mprReady`` (the three MPR
  viewports rendered by Cornerstone3D, a pixel read back), both in ms from the viewer's start; the wall
  time from ``page.goto`` to seeing ``mprReady`` is recorded too.
* **NiiVue** (peer): ``web/bench/niivue.html`` (built) served by a static file server
  (``http.server``, loopback) with the volume as ``/vol.nii`` (written by ``sobre export``). Each round:
  a fresh browser, open the page, wait for ``window.__bench.done``; ``marks.mpr`` is the time from the
  page's script start to ``loadVolumes`` + ``drawScene`` returned (multiplanar with the 3D tile).
  ``drawScene`` only queues the GPU work: the wall time from ``page.goto`` until one pixel of the canvas
  has been read back (which waits for that work, as Sobre's ``mprReady`` does) is NiiVue's first draw on
  screen. It has no earlier single-slice preview, and its page always draws the 3D tile (full-resolution
  ray casting, in software here), whereas Sobre's viewer under software WebGL leaves the 3D view to a
  button, so its ``mprReady`` holds the three planes only.

Browser memory (whole, and the growth over the blank page): the sum of the resident set sizes (and of the proportional set sizes, which do not count
shared pages twice) of chromium's processes (the children of this process, via psutil), on a blank page
before opening, sampled every 0.1 s while opening (peak) and 2 s after the page is ready; for Sobre also
the PSS by chromium process type (browser, renderer, gpu-process, ...) before and after, and the volume
texture's bytes as Cornerstone3D allocated them (``window.__sobre.texture()``), in the JSON and printed.

Rounds alternate (Sobre, NiiVue, Sobre, ...), 3 each by default; medians are reported with the load
average before and after. Targets (the workstation issue): first image < 1.5 s, MPR ready < 8 s, browser
memory < 3× the volume's bytes. Results also go to ``bench/out/viewer.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import http.server
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
WORK = OUT / "viewer"
PAGES = OUT / "viewer-pages"
STATIC = ROOT / "src" / "sobre" / "server" / "static"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1400, "height": 900}
USER, PASSWORD, PROJECT = "bench", "bench viewer password 1", "bench"
VOLUME_BYTES = 300 * 512 * 512 * 2
TARGETS = {"first_image_ms": 1500, "mpr_ready_ms": 8000, "memory_x_volume": 3.0}
SCHEMA = """description = "viewer benchmark"
[[segments]]
name = "lesion"
value = 1
color = [255, 0, 0]
category = { value = "49755003", scheme = "SCT", meaning = "Morphologically Altered Structure" }
type = { value = "52988006", scheme = "SCT", meaning = "Lesion" }
"""

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # the browser tests' chromium flags and server start-up (tests/web/serve.py)

from tests.web.serve import CHROMIUM_ARGS, sobre_serve  # noqa: E402


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def sobre_cmd(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "sobre", *args], check=True, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------- data
def build_workspace() -> Path:
    """The workspace (series ingested, cohort, project, user) and the NIfTI, once; in a subprocess each."""
    from bench_load import SERIES, ensure_series

    ensure_series()
    ws = WORK / "ws"
    if not (WORK / ".ws-complete").exists():
        import shutil

        if ws.exists():
            shutil.rmtree(ws)
        WORK.mkdir(parents=True, exist_ok=True)
        code = ("from sobre.catalog import Workspace; import sys; ws = Workspace.init(sys.argv[1]); "
                "ws.ingest([sys.argv[2]], site='bench'); ws.cohort_create('ct', 'modality == \"CT\"'); "
                "ws.freeze('ct'); ws.close()")
        subprocess.run([sys.executable, "-c", code, str(ws), str(SERIES)], check=True)
        (WORK / "schema.toml").write_text(SCHEMA)
        (WORK / "password").write_text(PASSWORD + "\n")
        sobre_cmd("users", "project", "create", PROJECT, "--cohort", "ct", "--schema", str(WORK / "schema.toml"), "-w", str(ws))
        sobre_cmd("users", "add", USER, "--password-file", str(WORK / "password"), "-w", str(ws))
        sobre_cmd("users", "project", "grant", USER, PROJECT, "viewer", "-w", str(ws))
        (WORK / ".ws-complete").write_text("ok\n")
    nii = WORK / "site" / "vol.nii"
    if not nii.exists():
        nii.parent.mkdir(parents=True, exist_ok=True)
        tmp = nii.with_name(".vol.nii")
        sobre_cmd("export", str(SERIES), "--to", str(tmp))
        tmp.rename(nii)
    return ws


def peer_site() -> Path:
    """A folder serving niivue.html, its assets and vol.nii (links into bench/out/viewer-pages)."""
    site = WORK / "site"
    for name in ("niivue.html", "assets"):
        link = site / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(PAGES / name)
    return site


# --------------------------------------------------------------------------- servers
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@contextlib.contextmanager
def static_serve(folder: Path):
    _Quiet.extensions_map = {**_Quiet.extensions_map, ".js": "text/javascript", ".nii": "application/octet-stream"}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


# --------------------------------------------------------------------------- memory
def browser_memory() -> tuple[int, int]:
    """(sum of RSS, sum of PSS) of this process's chromium descendants, bytes."""
    import psutil

    rss = pss = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if "chrom" not in p.name():
                continue
            rss += p.memory_info().rss
            try:
                pss += p.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                pass
        except psutil.NoSuchProcess:
            pass
    return rss, pss


def memory_by_process_type() -> dict[str, int]:
    """PSS of this process's chromium descendants summed by chromium's process type (browser, renderer,
    gpu-process, utility, zygote), bytes: where the growth is."""
    import psutil

    out: dict[str, int] = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if "chrom" not in p.name():
                continue
            kind = next((a.split("=", 1)[1] for a in p.cmdline() if a.startswith("--type=")), "browser")
            out[kind] = out.get(kind, 0) + p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            pass
    return out


class PeakSampler:
    def __init__(self) -> None:
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = browser_memory()
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# --------------------------------------------------------------------------- rounds
def poll(page, expr: str, timeout: float, what: str, errors: list[str]):
    deadline = time.monotonic() + timeout
    while True:
        got = page.evaluate(expr)
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}; page errors: {errors}")
        time.sleep(0.05)


def new_browser(pw):
    args = list(CHROMIUM_ARGS) + (["--no-sandbox"] if os.geteuid() == 0 else [])
    return pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True, timeout=120_000)


def _page(browser):
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(120_000)
    ctx.set_default_navigation_timeout(120_000)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return ctx, page, errors


def _mem(before, sampler, after) -> dict:
    return {"rss_before": before[0], "pss_before": before[1], "rss_peak": sampler.peak_rss, "pss_peak": sampler.peak_pss,
            "rss_after": after[0], "pss_after": after[1]}


def sobre_round(pw, base: str, key: str, shot: Path | None) -> dict:
    browser = new_browser(pw)
    try:
        ctx, page, errors = _page(browser)
        page.goto("about:blank")
        time.sleep(1.0)
        before = browser_memory()
        by_type_before = memory_by_process_type()
        page.goto(base + "/")
        page.fill("input[name=username]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("form.login button[type=submit]")
        page.wait_for_selector("a.card.project")
        logged_in = browser_memory()
        url = f"{base}/#/p/{PROJECT}/series/{urllib.parse.quote(key, safe='')}"
        with PeakSampler() as sampler:
            t0 = time.perf_counter()
            page.goto(url)
            poll(page, f"!!(window.__sobre && window.__sobre.key === {json.dumps(key)} && window.__sobre.timings.mprReady)",
                 300, "mprReady", errors)
            wall = (time.perf_counter() - t0) * 1000
            poll(page, "!!(window.__sobre && window.__sobre.ready)", 120, "the viewer to be ready", errors)
            time.sleep(2.0)
        after = browser_memory()
        by_type_after = memory_by_process_type()
        timings = page.evaluate("({...window.__sobre.timings})")
        texture = page.evaluate("window.__sobre.texture ? window.__sobre.texture() : null")
        sd = page.evaluate("window.__sobre.canvasStats('axial').sd")
        if shot:
            page.screenshot(path=str(shot))
        ctx.close()
        return {"timings": timings, "wall_to_mpr_ms": round(wall), "axial_sd": sd, "errors": errors, "texture": texture,
                "pss_by_type_before": by_type_before, "pss_by_type_after": by_type_after,
                **_mem(before, sampler, after), "rss_logged_in": logged_in[0], "pss_logged_in": logged_in[1]}
    finally:
        browser.close()


def niivue_round(pw, base: str, shot: Path | None) -> dict:
    browser = new_browser(pw)
    try:
        ctx, page, errors = _page(browser)
        page.goto("about:blank")
        time.sleep(1.0)
        before = browser_memory()
        with PeakSampler() as sampler:
            t0 = time.perf_counter()
            page.goto(base + "/niivue.html")
            poll(page, "!!(window.__bench && (window.__bench.done || window.__bench.error))", 300, "NiiVue", errors)
            wall_done = (time.perf_counter() - t0) * 1000
            # force the GPU work queued by drawScene to finish (one pixel read back), as Sobre's mprReady does
            page.evaluate("""(() => { const c = document.getElementById('gl'); const gl = c.getContext('webgl2');
                const px = new Uint8Array(4); gl.readPixels(1, 1, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px); })()""")
            wall = (time.perf_counter() - t0) * 1000
            time.sleep(2.0)
        after = browser_memory()
        bench = page.evaluate("({marks: {...window.__bench.marks}, error: window.__bench.error || null})")
        if bench["error"]:
            raise RuntimeError(f"NiiVue page failed: {bench['error']}")
        if shot:
            page.screenshot(path=str(shot))
        ctx.close()
        return {"marks": bench["marks"], "wall_to_done_ms": round(wall_done), "wall_to_draw_ms": round(wall), "errors": errors, **_mem(before, sampler, after)}
    finally:
        browser.close()


def series_key(base: str) -> str:
    import http.cookiejar

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    req = urllib.request.Request(base + "/api/auth/login", data=json.dumps({"username": USER, "password": PASSWORD}).encode(),
                                 headers={"Content-Type": "application/json"})
    opener.open(req, timeout=30).read()
    with opener.open(base + f"/api/projects/{PROJECT}/series", timeout=60) as r:
        items = json.load(r)["items"]
    if len(items) != 1:
        raise RuntimeError(f"expected one series, found {len(items)}")
    return items[0]["key"]


# --------------------------------------------------------------------------- main
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build-peer", action="store_true", help="run `npm run build:peer` in web/ first")
    ap.add_argument("--no-peer", action="store_true", help="measure Sobre alone")
    args = ap.parse_args(argv)

    if not (STATIC / "index.html").exists():
        raise SystemExit(f"the front end is not built in {STATIC} (make web)")
    if args.build_peer:
        subprocess.run(["npm", "run", "build:peer"], cwd=ROOT / "web", check=True)
    peer = not args.no_peer
    if peer and not (PAGES / "niivue.html").exists():
        raise SystemExit(f"{PAGES}/niivue.html is missing (cd web && npm run build:peer), or pass --no-peer")

    t_setup = time.perf_counter()
    ws = build_workspace()
    site = peer_site() if peer else None
    print(f"setup {time.perf_counter() - t_setup:.1f} s", flush=True)

    from playwright.sync_api import sync_playwright

    res: dict = {"date": dt.datetime.now().isoformat(timespec="minutes"), "uptime_before": uptime(),
                 "load_before": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                 "chromium": subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=False).stdout.strip(),
                 "volume_bytes": VOLUME_BYTES, "targets": TARGETS, "sobre": [], "niivue": []}
    print(res["uptime_before"], flush=True)
    with sobre_serve(ws, WORK / "serve.log") as base, (static_serve(site) if peer else contextlib.nullcontext()) as peer_base:
        key = series_key(base)
        with sync_playwright() as pw:
            for r in range(args.rounds):
                first = r == 0
                s = sobre_round(pw, base, key, WORK / "sobre.png" if first else None)
                res["sobre"].append(s)
                t = s["timings"]
                print(f"sobre  #{r + 1}: firstImage {t.get('firstImage')} ms, mprReady {t.get('mprReady')} ms "
                      f"(wall {s['wall_to_mpr_ms']} ms), volumeLoaded {t.get('volumeLoaded')} ms, "
                      f"RSS {s['rss_before'] / 1e6:.0f} -> peak {s['rss_peak'] / 1e6:.0f} / after {s['rss_after'] / 1e6:.0f} MB "
                      f"(PSS {s['pss_before'] / 1e6:.0f} -> {s['pss_after'] / 1e6:.0f} MB), axial sd {s['axial_sd']:.1f}", flush=True)
                print("        PSS growth by process: " + ", ".join(
                    f"{k} {(v - s['pss_by_type_before'].get(k, 0)) / 1e6:+.0f} MB" for k, v in sorted(s["pss_by_type_after"].items()))
                      + (f"; texture {s['texture']['bytes'] / 1e6:.1f} MB ({s['texture']['bytesPerVoxel']} B/voxel)" if s["texture"] else ""), flush=True)
                if peer:
                    n = niivue_round(pw, peer_base, WORK / "niivue.png" if first else None)
                    res["niivue"].append(n)
                    print(f"niivue #{r + 1}: draw {n['marks'].get('mpr'):.0f} ms from script start "
                          f"(wall {n['wall_to_done_ms']} ms; read back at {n['wall_to_draw_ms']} ms), RSS {n['rss_before'] / 1e6:.0f} -> peak "
                          f"{n['rss_peak'] / 1e6:.0f} / after {n['rss_after'] / 1e6:.0f} MB "
                          f"(PSS {n['pss_before'] / 1e6:.0f} -> {n['pss_after'] / 1e6:.0f} MB)", flush=True)
    res["uptime_after"] = uptime()
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(res["uptime_after"], flush=True)

    S = res["sobre"]
    summary = {
        "sobre_first_image_ms": med([s["timings"].get("firstImage") for s in S]),
        "sobre_mpr_ready_ms": med([s["timings"].get("mprReady") for s in S]),
        "sobre_volume_loaded_ms": med([s["timings"].get("volumeLoaded") for s in S]),
        "sobre_wall_to_mpr_ms": med([s["wall_to_mpr_ms"] for s in S]),
        "sobre_rss_before": med([s["rss_before"] for s in S]),
        "sobre_rss_peak": med([s["rss_peak"] for s in S]),
        "sobre_rss_after": med([s["rss_after"] for s in S]),
        "sobre_pss_peak": med([s["pss_peak"] for s in S]),
        "sobre_pss_after": med([s["pss_after"] for s in S]),
        "sobre_pss_before": med([s["pss_before"] for s in S]),
        "sobre_rss_delta_peak": med([s["rss_peak"] - s["rss_before"] for s in S]),
        "sobre_rss_delta_after": med([s["rss_after"] - s["rss_before"] for s in S]),
        "sobre_pss_delta_peak": med([s["pss_peak"] - s["pss_before"] for s in S]),
        "sobre_pss_delta_after": med([s["pss_after"] - s["pss_before"] for s in S]),
    }
    if peer:
        N = res["niivue"]
        summary.update({
            "niivue_draw_ms": med([n["marks"].get("mpr") for n in N]),
            "niivue_wall_to_done_ms": med([n["wall_to_done_ms"] for n in N]),
            "niivue_wall_to_draw_ms": med([n["wall_to_draw_ms"] for n in N]),
            "niivue_rss_before": med([n["rss_before"] for n in N]),
            "niivue_rss_peak": med([n["rss_peak"] for n in N]),
            "niivue_rss_after": med([n["rss_after"] for n in N]),
            "niivue_pss_peak": med([n["pss_peak"] for n in N]),
            "niivue_pss_after": med([n["pss_after"] for n in N]),
            "niivue_pss_before": med([n["pss_before"] for n in N]),
            "niivue_rss_delta_peak": med([n["rss_peak"] - n["rss_before"] for n in N]),
            "niivue_rss_delta_after": med([n["rss_after"] - n["rss_before"] for n in N]),
            "niivue_pss_delta_peak": med([n["pss_peak"] - n["pss_before"] for n in N]),
            "niivue_pss_delta_after": med([n["pss_after"] - n["pss_before"] for n in N]),
        })
    res["summary"] = summary
    (OUT / "viewer.json").write_text(json.dumps(res, indent=2) + "\n")

    v = VOLUME_BYTES
    print("\nmedians of", args.rounds, "rounds; volume", f"{v / 1e6:.1f} MB")
    fi, mpr = summary["sobre_first_image_ms"], summary["sobre_mpr_ready_ms"]
    print(f"sobre:  first image {fi} ms (target < {TARGETS['first_image_ms']}: {'met' if fi is not None and fi < TARGETS['first_image_ms'] else 'NOT met'}), "
          f"MPR ready {mpr} ms (target < {TARGETS['mpr_ready_ms']}: {'met' if mpr is not None and mpr < TARGETS['mpr_ready_ms'] else 'NOT met'})")
    for what in ("rss_peak", "rss_after", "pss_peak", "pss_after", "rss_delta_peak", "pss_delta_peak", "pss_delta_after"):
        x = summary[f"sobre_{what}"] / v
        print(f"sobre:  browser {what} {summary[f'sobre_{what}'] / 1e6:.0f} MB = {x:.2f}x volume "
              f"(target < {TARGETS['memory_x_volume']}x: {'met' if x < TARGETS['memory_x_volume'] else 'NOT met'})")
    if peer:
        print(f"niivue: drawScene returned {summary['niivue_draw_ms']:.0f} ms after script start "
              f"(wall {summary['niivue_wall_to_done_ms']} ms); drawn (pixel read back) {summary['niivue_wall_to_draw_ms']} ms wall")
        for what in ("rss_peak", "rss_after", "pss_peak", "pss_after", "rss_delta_peak", "pss_delta_peak", "pss_delta_after"):
            print(f"niivue: browser {what} {summary[f'niivue_{what}'] / 1e6:.0f} MB = {summary[f'niivue_{what}'] / v:.2f}x volume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
