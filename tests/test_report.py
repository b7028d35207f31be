#!/usr/bin/python3
"""test_report.py - scripts/report.py as a person sees its page (docs/report.md).

Default: writes a small run directory itself (metrics.jsonl + config.json in the shapes the
coordinator writes: per-site lines, a site that leaves, DP fields; a second one under secure
aggregation with a "selected_round"), renders the report, checks its structure (every figure by
id, every image a data: URI of well-formed SVG, nothing loaded from outside, a hostile site id,
Bye reason and config value escaped), the refusals (malformed line with file:line, empty and
missing run directory: exit 2) and --help; then loads the page in headless Chromium, asserts no
console message at all (the page has no script; a blocked load or a CSP violation would log
one: a control page proves that such a message is seen) and that the screenshot, decoded here
with zlib, is not blank.

--real: runs `moeh run --admissions 600 --rounds 2` from MOEH_BIN_DIR and renders its run
directory (the shapes of today's coordinator, not of this file's copy of them).

Chromium missing is a failure, not a skip: CI installs it (scripts/debian-packages.txt).
Runs report.py with this interpreter (ctest passes Debian's /usr/bin/python3, which has
python3-matplotlib). Exit 0 only if every check passed.
"""
import base64
import html.parser
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(HERE, "..", "scripts", "report.py")
FAILS = []
HOSTILE_SITE = "evil<script>alert(\"x\")</script>'&"
HOSTILE_WHY = "\"><img src=x onerror=alert(1)>"
HOSTILE_CFG = "</td><script>alert('cfg')</script>"
TASKS = ["mortality", "los7", "readmit30"]
COMBOS = ["E", "N", "EN", "I", "EI", "NI", "ENI"]
ALL_FIGS = ["fig-loss", "fig-auroc", "fig-task-learning", "fig-task-curves", "fig-combo-auroc",
            "fig-gate-heatmap", "fig-gate-rounds", "fig-participation", "fig-dp-epsilon",
            "fig-calibration", "fig-roc"]


CALIB_ROWS = {"test": 20, "val": 10}  # rows per reliability bin (bin 5 empty)
RETRY_WHY = "1 of the 2 sites needed replied"


def task_loss(split, r, k):
    """The per-task loss of an "eval" line: task k's, round r's, split's."""
    return round((0.6 if split == "test" else 0.65) - 0.03 * r + 0.05 * k, 4)


def calib_values(split, r):
    """(Brier, ECE) of a split's calibration line in round r: test and validation differ."""
    return (round(0.2 - 0.01 * r, 4), 0.05) if split == "test" else (round(0.3 - 0.01 * r, 4), 0.08)


def trapezoid(x, y):
    return sum((x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2 for i in range(1, len(x)))


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILS.append(what)
    return cond


# ---------------------------------------------------------------- a run directory

def write_run(d, rounds=4, secagg=False, dp=True, selected=None, legacy=False):
    """A run directory in the coordinator's shapes (coordinator/report.c). legacy: as an older
    coordinator wrote it (no site lists, no per-task loss, no retry lines, no calibration
    split)."""
    os.makedirs(d, exist_ok=True)
    sites = ["site-1", "site-2", HOSTILE_SITE]
    lines = [{"event": "stats", "sites": len(sites), "features": 68}]
    if not legacy:
        lines[0]["contributors"] = sorted(sites)
    for r in range(1, rounds + 1):
        here = sites if r < 3 else sites[:2]  # the hostile site leaves in round 3
        # round 2: site-2's test evaluation misses the sum (a dropout of that phase only)
        tested = [s for s in here if (r, s) != (2, "site-2")]
        if not legacy and r == 2:  # a failed TRAIN attempt, retried
            lines.append({"event": "retry", "round": 2, "phase": "train", "outcome": "retry",
                          "attempt": 1, "max_retries": 2, "connected": 3, "needed": 2,
                          "why": RETRY_WHY})
        dpf = {}
        if dp:
            dpf = {"dp_epsilon": 2.0 + 1.5 * r, "dp_epsilon_coordinator": 2.0 + 1.5 * r,
                   "dp_delta": 1e-05, "dp_noise": 1, "dp_clip": 2.5, "dp_sites": 2, "dp_rounds": r}
        if not secagg:
            for s in here:
                lines.append({"event": "site_update", "round": r, "site": s,
                              "train_loss": None if dp else 0.9 / r, "n_samples": 100, "steps": 4})
        if r == 3:
            lines.append({"event": "site_gone", "round": r, "site": HOSTILE_SITE,
                          "why": HOSTILE_WHY})
        lines.append(dict({"event": "train", "round": r, "sites": len(here), "participants": 3,
                           "train_loss": None if dp else 0.9 / r, "samples": 100.0 * len(here),
                           "steps": 12, "groups_updated": 10, "model_version": r}, **dpf))
        if not legacy:
            lines[-1]["contributors"] = sorted(here)
        lines.append({"event": "uploads", "round": r, "slots": 2, "max_in_flight": 2,
                      "expired": 1 if r == 2 else 0})
        if not secagg:
            for s in tested:
                lines.append(dict({"event": "site_eval", "round": r, "site": s,
                                   "test_loss": 0.5 - 0.01 * r},
                                  **{"auroc_" + t: 0.6 + 0.03 * r for t in TASKS}))
        au = {t: 0.55 + 0.05 * r + 0.01 * k for k, t in enumerate(TASKS)}
        ev = {"event": "eval", "round": r, "sites": len(here),
              "train_loss": None if dp else 0.9 / r, "test_loss": 0.5 - 0.02 * r,
              "auroc_mean": sum(au.values()) / 3, "seconds": 2.5}
        ev.update({"auroc_" + t: au[t] for t in TASKS})
        ev.update(dpf)
        if not legacy:
            ev["test_contributors"] = sorted(tested)
            ev.update({"test_loss_" + t: task_loss("test", r, k) for k, t in enumerate(TASKS)})
            if selected is not None:  # a validating run
                ev["val_contributors"] = sorted(here)
                ev["val_loss"] = 0.52 - 0.02 * r
                ev.update({"val_loss_" + t: task_loss("val", r, k) for k, t in enumerate(TASKS)})
                ev.update({"val_auroc_" + t: au[t] - 0.02 for t in TASKS})
        if selected is not None:
            ev["selected_round"] = selected
            ev["why"] = "best mean validation AUROC"
        lines.append(ev)
        for t in TASKS:
            tl = {"event": "task", "round": r, "task": t, "auroc": au[t]}
            for k, c in enumerate(COMBOS):
                tl["auroc_" + c] = None if "N" in c and "E" not in c or c == "I" else \
                    au[t] - 0.01 * k
            lines.append(tl)
        g = {"event": "gate", "round": r}
        for k, c in enumerate(COMBOS):
            rows = 0 if c in ("N", "I", "NI") else 100 - 10 * k
            w = [0.0] * 7
            if rows:
                w = [0.05] * 7
                w[k] = 0.7
            g[c] = {"rows": rows, "weights": w}
        lines.append(g)
        # reliability curves: empty bins null, as the coordinator writes them; the test split
        # then the validation one (the coordinator's order), which must not replace it
        for split in ("test", "val"):
            for t in TASKS:
                bins = [{"lo": k / 10, "hi": (k + 1) / 10,
                         "n": 0 if k == 5 else CALIB_ROWS[split] + k,
                         "mean_p": None if k == 5 else k / 10 + 0.05,
                         "observed": None if k == 5 else min(1.0, k / 10 + 0.02 * r)}
                        for k in range(10)]
                b, e = calib_values(split, r)
                lines.append({"event": "calibration", "round": r, "task": t, "split": split,
                              "n": sum(b["n"] for b in bins), "brier": b, "ece": e,
                              "bins": bins})
                if legacy:
                    del lines[-1]["split"]
            if legacy:
                break
        for split in ("val", "test"):  # ROC points as the coordinator writes them
            for k, t in enumerate(TASKS):
                fpr = [0, 0.05, 0.2, 0.45, 0.7, 1]
                tpr = [0, min(1, 0.2 + 0.03 * r + 0.02 * k), 0.55, 0.8, 0.93, 1]
                lines.append({"event": "roc", "round": r, "task": t, "split": split,
                              "n_pos": 30, "n_neg": 170, "auroc": round(trapezoid(fpr, tpr), 6),
                              "fpr": fpr, "tpr": tpr})
        if secagg:
            lines.append({"event": "site_metrics", "round": r, "available": False,
                          "why": "secure aggregation: the coordinator learns only sums; each site "
                                 "logs its own metrics"})
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for ln in lines:
            f.write(json.dumps(ln, separators=(",", ":")) + "\n")
    cfg = {"bind": "tcp://127.0.0.1:*", "insecure": False, "registry": HOSTILE_CFG,
           "rounds": rounds, "min_sites": 2, "strategy": "fedavg", "secagg": secagg,
           "lambda_lb": 0.00999999977648258, "dp_clip": 2.5 if dp else 0,
           "dp_noise": 1 if dp else 0, "dp_delta": 9.99999974737875e-06}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent="\t")


def run_report(args, timeout=300):
    t = time.monotonic()
    p = subprocess.run([sys.executable, REPORT] + args, capture_output=True, text=True,
                       timeout=timeout)
    return p, time.monotonic() - t


# ---------------------------------------------------------------- structure

class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.figs, self.tags, self.urls, self.text, self.meta = {}, [], [], [], []
        self.cur_fig = None
        self.rows, self.cell = [], None  # every table row as a list of its cells' text

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for k in ("src", "href", "action", "data", "poster", "srcset"):
            if k in a:
                self.urls.append((tag, k, a[k]))
        if tag == "figure":
            self.cur_fig = a.get("id")
            self.figs[self.cur_fig] = []
        if tag == "img" and self.cur_fig is not None:
            self.figs[self.cur_fig].append(a.get("src", ""))
        if tag == "meta":
            self.meta.append(a)
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self.cell = []
        if any(k.startswith("on") for k in a):
            self.tags.append("EVENT-HANDLER:" + tag)

    def handle_endtag(self, tag):
        if tag == "figure":
            self.cur_fig = None
        if tag in ("td", "th") and self.cell is not None and self.rows:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self.cell is not None:
            self.cell.append(data)


def page_rows(page_text):
    p = Page()
    p.feed(page_text)
    return p.rows


def check_rows(page_text, want, label):
    """Each row of want (cells as text) is a row of one of the page's tables."""
    rows = page_rows(page_text)
    for w in want:
        check(w in rows, f"{label}: table row {w}")


def ids(*names):
    return f"{len(names)}: " + ", ".join(sorted(names))


def check_participation(page_text, label, validated):
    """Who reported in each phase and who dropped out (write_run: the hostile site leaves in
    round 3; site-2's test evaluation of round 2 misses the sum), and the retried TRAIN phase of
    round 2."""
    left = f"{HOSTILE_SITE} (left: {HOSTILE_WHY})"
    want = [["1", "train", ids("site-1", "site-2", HOSTILE_SITE), "none"],
            ["2", "train", ids("site-1", "site-2", HOSTILE_SITE), "none"],
            ["2", "test", ids("site-1", HOSTILE_SITE), "site-2"],
            ["3", "train", ids("site-1", "site-2"), left],
            ["4", "train", ids("site-1", "site-2"), HOSTILE_SITE],
            ["2", "train", "opened again", "1 of 2", "3 / 2", RETRY_WHY]]
    if validated:
        want += [["2", "validation", ids("site-1", "site-2", HOSTILE_SITE), "none"],
                 ["3", "validation", ids("site-1", "site-2"), left]]
    check_rows(page_text, want, label)


def check_task_table(page_text, mark, label, validated):
    """The per-task table of the marked round: AUROC, loss and Brier of each split."""
    want = []
    for k, t in enumerate(TASKS):
        au = 0.55 + 0.05 * mark + 0.01 * k
        val = [f"{au - 0.02:.4f}", f"{task_loss('val', mark, k):.4f}"] if validated else \
            ["\u2013", "\u2013"]
        want.append([t, f"{au:.4f}", val[0], f"{task_loss('test', mark, k):.4f}", val[1],
                     f"{calib_values('test', mark)[0]:.4f}",
                     f"{calib_values('val', mark)[0]:.4f}"])
    check_rows(page_text, want, label)


def check_calibration(page_text, mark, label):
    """The calibration table of the marked round: one row per task and split, each with its own
    split's Brier score, ECE and rows (the validation line, written after the test one, must
    neither replace it nor be shown as test)."""
    rows = page_rows(page_text)
    head = ["task", "split", "Brier score", "ECE", "rows"]
    check(head in rows, f"{label}: calibration table with a split column")
    for split, name in (("test", "test"), ("val", "validation")):
        b, e = calib_values(split, mark)
        n = str(9 * CALIB_ROWS[split] + sum(range(10)) - 5)
        for t in TASKS:
            want = [t, name, f"{b:.4f}", f"{e:.4f}", n]
            check(want in rows, f"{label}: {name} calibration of {t} shown as {name} ({want})")


def check_structure(page_text, figs_expected, label):
    p = Page()
    p.feed(page_text)
    text = "".join(p.text)
    for fid in figs_expected:
        srcs = p.figs.get(fid)
        if not check(srcs is not None and len(srcs) == 1, f"{label}: figure #{fid} present"):
            continue
        src = srcs[0]
        ok = src.startswith("data:image/svg+xml;base64,")
        if check(ok, f"{label}: #{fid} is an inline SVG (data: URI)"):
            svg = base64.b64decode(src.split(",", 1)[1])
            try:
                root = ET.fromstring(svg)
                good = root.tag.endswith("svg") and len(svg) > 2000
            except ET.ParseError:
                good = False
            check(good, f"{label}: #{fid} decodes to well-formed SVG")
            check(b"<script" not in svg.lower(), f"{label}: #{fid} SVG has no script")
    extra = set(p.figs) - set(figs_expected)
    check(not extra, f"{label}: no unexpected figure ({sorted(extra)})")
    check(all(v.startswith("data:") or v.startswith("#") for _, _, v in p.urls),
          f"{label}: every src/href is data: or #: nothing loaded from outside")
    check("script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
          and not any(t.startswith("EVENT-HANDLER") for t in p.tags),
          f"{label}: no script, link, iframe element or event-handler attribute")
    check(any(m.get("http-equiv") == "Content-Security-Policy" and
              "default-src 'none'" in m.get("content", "") for m in p.meta),
          f"{label}: Content-Security-Policy default-src 'none'")
    low = page_text.lower()
    check("<script" not in low and "onerror=" not in low.replace("onerror=alert(1)&gt;", ""),
          f"{label}: no raw <script or onerror= anywhere in the page source")
    return text


# ---------------------------------------------------------------- PNG (zlib only)

def decode_png(data):
    """(width, height, channels, rows as bytearrays) of an 8-bit non-interlaced PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    w, h, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or interlace or ctype not in (0, 2, 4, 6):
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {ctype})")
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    raw = zlib.decompress(b"".join(idat))
    stride = w * bpp
    prev, rows = bytearray(stride), []
    for y in range(h):
        off = y * (stride + 1)
        f, line = raw[off], bytearray(raw[off + 1:off + 1 + stride])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        elif f != 0:
            raise ValueError(f"bad PNG filter {f} in row {y}")
        rows.append(line)
        prev = line
    return w, h, bpp, rows


def blank_stats(w, h, bpp, rows, grid=8):
    """(luminance variance, tiles with ink, tiles with colour) on a grid x grid split."""
    ink, colour = set(), set()
    n = s = s2 = 0
    for y in range(0, h, 2):
        row = rows[y]
        for x in range(0, w, 2):
            px = row[x * bpp:x * bpp + min(bpp, 3)]
            if bpp < 3:
                r = g = b = px[0]
            else:
                r, g, b = px[0], px[1], px[2]
            lum = (r * 299 + g * 587 + b * 114) // 1000
            n += 1
            s += lum
            s2 += lum * lum
            tile = (y * grid // h, x * grid // w)
            if lum < 200:
                ink.add(tile)
            if max(r, g, b) - min(r, g, b) > 80:
                colour.add(tile)
    mean = s / n
    return s2 / n - mean * mean, len(ink), len(colour)


def png_bytes(w, h, rgb):
    """A tiny RGB PNG of one colour (to check that blank_stats calls it blank)."""
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))

    def chunk(k, b):
        return struct.pack(">I", len(b)) + k + b + struct.pack(">I", zlib.crc32(k + b))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------- Chromium

# --no-sandbox: Chromium refuses to start as root (CI) without it; --disable-dev-shm-usage: a
# container's /dev/shm (64 MB under Docker) is too small for a long page's renderer.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--no-first-run", "--no-default-browser-check",
                  "--disable-extensions", "--enable-logging=stderr", "--v=0"]


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_shot(chromium, page, png, work, size="1280,4000"):
    """Runs headless Chromium on file://page; returns (exit code, console lines, seconds).
    Chromium runs in its own process group, killed as a whole if it overruns."""
    prof = tempfile.mkdtemp(prefix="chromium-", dir=work)
    cmd = [chromium] + CHROMIUM_FLAGS + [f"--user-data-dir={prof}", f"--screenshot={png}",
                                         f"--window-size={size}", "file://" + page]
    env = dict(os.environ, HOME=prof)
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        err += b"\n(timed out after 120 s)"
    try:  # the browser's helpers (zygote, GPU, renderer) share its group
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    console = [ln for ln in err.decode("utf-8", "replace").splitlines() if ":CONSOLE" in ln]
    if p.returncode != 0:
        print(err.decode("utf-8", "replace")[-3000:])
    return p.returncode, console, time.monotonic() - t


# ---------------------------------------------------------------- the tests

def test_refusals(work):
    p, _ = run_report(["--help"])
    check(p.returncode == 0 and "RUN_DIR" in p.stdout and "--out" in p.stdout, "--help")
    p, _ = run_report([os.path.join(work, "nope")])
    check(p.returncode == 2 and "no such run directory" in p.stderr,
          f"missing run directory: exit 2 with a message ({p.returncode}: {p.stderr.strip()})")
    empty = os.path.join(work, "empty")
    os.makedirs(empty)
    p, _ = run_report([empty])
    check(p.returncode == 2 and "empty run directory" in p.stderr,
          f"empty run directory: exit 2 with a message ({p.returncode}: {p.stderr.strip()})")
    bad = os.path.join(work, "bad")
    write_run(bad, rounds=2)
    path = os.path.join(bad, "metrics.jsonl")
    with open(path) as f:
        lines = f.readlines()
    lines[2] = lines[2].rstrip("\n")[:-7] + "\n"  # truncated mid-line
    with open(path, "w") as f:
        f.writelines(lines)
    p, _ = run_report([bad])
    check(p.returncode == 2 and f"{path}:3:" in p.stderr and "JSON" in p.stderr,
          f"malformed line refused with file:line ({p.returncode}: {p.stderr.strip()})")
    check(not os.path.exists(os.path.join(bad, "report.html")), "no report after a refusal")
    lines[2] = '{"event":"eval","round":1,"test_loss":NaN}\n'
    with open(path, "w") as f:
        f.writelines(lines)
    p, _ = run_report([bad])
    check(p.returncode == 2 and f"{path}:3:" in p.stderr, "NaN (not JSON) refused with file:line")
    lines[2] = '{"event":"eval","round":"one"}\n'
    with open(path, "w") as f:
        f.writelines(lines)
    p, _ = run_report([bad])
    check(p.returncode == 2 and f"{path}:3:" in p.stderr and "round" in p.stderr,
          "a field of the wrong type refused with file:line and its name")
    lines[2] = ('{"event":"roc","round":1,"task":"mortality","split":"test","auroc":0.5,'
                '"fpr":[0,1],"tpr":[0,0.5,1]}\n')
    with open(path, "w") as f:
        f.writelines(lines)
    p, _ = run_report([bad])
    check(p.returncode == 2 and f"{path}:3:" in p.stderr and "fpr" in p.stderr,
          "ROC points of unequal length refused with file:line")
    os.remove(path)
    p, _ = run_report([bad])
    check(p.returncode == 2 and "metrics.jsonl" in p.stderr, "no metrics.jsonl: exit 2")


def test_exit_codes(work):
    """The exit statuses `moeh report --help` and docs/report.md list are the ones the code
    gives: 0 written, 1 report.py not found (or not runnable), 2 usage error or bad input,
    3 matplotlib missing (report.py's own, passed on by moeh report)."""
    run = os.path.join(work, "run-codes")
    write_run(run, rounds=1, dp=False)
    # no matplotlib: Debian's python3-matplotlib lives in dist-packages, which -S leaves out
    p = subprocess.run([sys.executable, "-S", REPORT, run], capture_output=True, text=True,
                       timeout=120)
    check(p.returncode == 3 and "matplotlib is missing" in p.stderr and
          "python3-matplotlib" in p.stderr and not os.path.exists(os.path.join(run, "report.html")),
          f"report.py without matplotlib: exit 3 naming the package ({p.returncode}: "
          f"{p.stderr.strip()})")
    p, _ = run_report(["--help"])
    check(all(f"{c} " in p.stdout for c in "0123"), "report.py --help lists exit 0, 1, 2, 3")
    moeh = os.path.join(os.environ.get("MOEH_BIN_DIR", ""), "moeh")
    if not check(os.access(moeh, os.X_OK), f"moeh in MOEH_BIN_DIR ({moeh})"):
        return

    def moeh_report(args, script=None):
        env = dict(os.environ)
        if script is not None:
            env["MOEH_REPORT_SCRIPT"] = script
        return subprocess.run([moeh, "report"] + args, capture_output=True, text=True, env=env,
                              timeout=120)
    p = moeh_report(["--help"])
    help_codes = p.stdout.replace("\n", " ")
    check(p.returncode == 0 and all(w in help_codes for w in (
        "0 report written", "1 report.py not found", "2 usage error or bad input",
        "3 matplotlib missing")), f"moeh report --help lists 0, 1, 2 and 3 ({p.stdout!r})")
    p = moeh_report([run], script=os.path.join(work, "no-such-report.py"))
    check(p.returncode == 1 and "cannot find report.py" in p.stderr,
          f"moeh report without report.py: exit 1 ({p.returncode}: {p.stderr.strip()})")
    stub = os.path.join(work, "exit3.py")  # stands for report.py on a machine without matplotlib
    with open(stub, "w") as f:
        f.write("import sys\nsys.exit(3)\n")
    p = moeh_report([run], script=stub)
    check(p.returncode == 3, f"moeh report passes report.py's exit 3 on ({p.returncode})")
    p = moeh_report([os.path.join(work, "nope")])
    check(p.returncode == 2 and "no such run directory" in p.stderr,
          f"moeh report on a missing run directory: exit 2 ({p.returncode})")
    p = moeh_report(["--bogus"])
    check(p.returncode == 2, f"moeh report with an unknown option: exit 2 ({p.returncode})")
    p = moeh_report([run, "--out", os.path.join(work, "codes.html")])
    check(p.returncode == 0 and os.path.exists(os.path.join(work, "codes.html")),
          f"moeh report writes the page: exit 0 ({p.returncode}: {p.stderr.strip()})")


def test_reports(work):
    """Renders two runs; returns the path of the first page (for Chromium)."""
    full = os.path.join(work, "run-plain-dp")
    write_run(full, rounds=4, secagg=False, dp=True)
    out = os.path.join(work, "elsewhere.html")
    p, secs = run_report([full, "--out", out])
    print(f"     (report.py took {secs:.1f} s)")
    if not check(p.returncode == 0 and os.path.exists(out),
                 f"report of a plain DP run written with --out ({p.stderr.strip()})"):
        return None
    page = open(out, encoding="utf-8").read()
    text = check_structure(page, ALL_FIGS, "plain+DP")
    check(HOSTILE_SITE in text, "hostile site id shown as text (after unescaping)")
    check(HOSTILE_WHY in text, "hostile Bye reason shown as text")
    check(HOSTILE_CFG in text, "hostile config value shown as text")
    check(HOSTILE_SITE not in page and HOSTILE_WHY not in page and HOSTILE_CFG not in page,
          "no hostile string appears unescaped in the page source")
    check("evil&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#x27;&amp;" in page,
          "site id escaped with quotes (&quot; &#x27;) and &amp;")
    check("last round 4" in text, "no selected_round: the last round is marked and named")
    check("0.01" in text and "0.00999999977648258" not in text, "float32 config shown as given")
    check("1e-05" in text, "DP delta in the DP table")
    check_calibration(page, 4, "plain+DP")
    check_participation(page, "plain+DP", validated=False)
    check_task_table(page, 4, "plain+DP", validated=False)

    sec = os.path.join(work, "run-secagg")
    write_run(sec, rounds=5, secagg=True, dp=False, selected=3)
    p, secs = run_report([sec])
    default_out = os.path.join(sec, "report.html")
    if check(p.returncode == 0 and os.path.exists(default_out),
             f"report of a secagg run at RUN_DIR/report.html ({p.stderr.strip()})"):
        page2 = open(default_out, encoding="utf-8").read()
        text2 = check_structure(page2, [f for f in ALL_FIGS if f != "fig-dp-epsilon"], "secagg")
        check("selected round 3" in text2 and "best mean validation AUROC" in text2,
              "a selected_round in the metrics is marked and its reason shown")
        check("DP-FedAvg was off" in text2, "no DP: said so, no epsilon figure")
        check_calibration(page2, 3, "secagg (selected round 3)")
        check_participation(page2, "secagg", validated=True)
        check_task_table(page2, 3, "secagg", validated=True)
        check("secure aggregation: the coordinator learns only sums" in text2,
              "secagg: why the per-site metrics are missing is shown")

    old = os.path.join(work, "run-legacy")  # as an older coordinator wrote its metrics
    write_run(old, rounds=3, secagg=True, dp=False, legacy=True)
    p, secs = run_report([old])
    if check(p.returncode == 0, f"report of a legacy run ({p.stderr.strip()})"):
        page3 = open(os.path.join(old, "report.html"), encoding="utf-8").read()
        text3 = check_structure(page3, [f for f in ALL_FIGS if f != "fig-dp-epsilon"], "legacy")
        check("these metrics name no site" in text3, "legacy: participation as counts, said so")
        check("did not record failed phase attempts" in text3, "legacy: no retry lines, said so")
        check("carry no per-task loss" in text3, "legacy: no per-task loss, said so")
        rows = page_rows(page3)
        head = ["task", "split", "Brier score", "ECE", "rows"]
        cal = rows[rows.index(head) + 1:] if head in rows else []
        cal = cal[:next((i for i, r in enumerate(cal) if not r or r[0] not in TASKS), len(cal))]
        b, e = calib_values("test", 3)
        check([r[:2] for r in cal] == [[t, "test"] for t in TASKS] and
              ["mortality", "test", f"{b:.4f}", f"{e:.4f}", "220"] in cal,
              f"legacy: a calibration line without split counts as test ({cal})")
        check("each site logs its own metrics" in text2, "why per-site rows are missing is shown")
    return out


def test_chromium(page, work):
    chromium = find_chromium()
    if not check(chromium is not None, "chromium is installed (Debian package 'chromium'; "
                                       "scripts/install-deps.sh)"):
        return
    # the detectors first: a blank image is blank, a page with a blocked load logs a message
    var, ink, col = blank_stats(*decode_png(png_bytes(64, 48, (255, 255, 255))))
    check(var == 0 and ink == 0 and col == 0, "blank detector: a white PNG is blank")
    control = os.path.join(work, "control.html")
    with open(control, "w") as f:
        f.write("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" "
                "content=\"default-src 'none'; img-src data:\"></head><body>"
                "<img src=\"http://127.0.0.1:9/x.png\"></body></html>\n")
    rc, console, secs = chromium_shot(chromium, control, os.path.join(work, "control.png"), work,
                                      size="400,300")
    check(rc == 0 and console, f"console detector: a blocked load in a control page is seen "
                               f"({len(console)} message(s), {secs:.1f} s)")
    png = os.path.join(work, "report.png")
    rc, console, secs = chromium_shot(chromium, page, png, work)
    print(f"     (chromium took {secs:.1f} s)")
    check(rc == 0 and os.path.exists(png), f"chromium rendered the report (exit {rc})")
    check(not console, "no console message while loading the report" +
          "".join("\n       " + c for c in console))
    if not os.path.exists(png):
        return
    t = time.monotonic()
    w, h, bpp, rows = decode_png(open(png, "rb").read())
    var, ink, col = blank_stats(w, h, bpp, rows)
    print(f"     (screenshot {w}x{h}, {bpp} channels: luminance variance {var:.0f}, "
          f"{ink}/64 tiles with ink, {col}/64 with colour; "
          f"decoded in {time.monotonic() - t:.1f} s)")
    check((w, h) == (1280, 4000), "screenshot has the window's size")
    check(var > 100, "screenshot is not blank (luminance variance)")
    check(ink >= 16, "ink in at least 16 of 64 regions")
    check(col >= 8, "colour (the figures) in at least 8 of 64 regions")
    # the ROC figure sits below the first 4000 px: shown on its own, as Chromium draws it
    p = Page()
    text = open(page, encoding="utf-8").read()
    p.feed(text)
    src = (p.figs.get("fig-roc") or [""])[0]
    if not check(src.startswith("data:image/svg+xml"), "chromium: the page has the ROC figure"):
        return
    alone = os.path.join(work, "roc.html")
    with open(alone, "w") as f:
        f.write("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" "
                "content=\"default-src 'none'; img-src data:\"></head><body>"
                f"<img src=\"{src}\" width=\"880\"></body></html>\n")
    png = os.path.join(work, "roc.png")
    rc, console, secs = chromium_shot(chromium, alone, png, work, size="900,320")
    check(rc == 0 and not console and os.path.exists(png),
          f"chromium rendered the ROC figure alone, no console message ({secs:.1f} s)" +
          "".join("\n       " + c for c in console))
    if os.path.exists(png):
        var, ink, col = blank_stats(*decode_png(open(png, "rb").read()))
        print(f"     (ROC screenshot: luminance variance {var:.0f}, {ink}/64 tiles with ink, "
              f"{col}/64 with colour)")
        check(var > 100 and ink >= 16 and col >= 4,
              "ROC screenshot is not blank: axes and coloured curves")


def test_real(work):
    bindir = os.environ.get("MOEH_BIN_DIR")
    sim = os.path.join(bindir or "", "moeh")
    if not check(bindir and os.access(sim, os.X_OK), f"moeh in MOEH_BIN_DIR ({sim})"):
        return
    t = time.monotonic()
    p = subprocess.run([sim, "run", "--out", os.path.join(work, "moeh-run"), "--admissions",
                        "600", "--rounds", "2", "--timeout-s", "240"], cwd=work,
                       capture_output=True, text=True, timeout=300)
    print(f"     (moeh run took {time.monotonic() - t:.1f} s)")
    if not check(p.returncode == 0, "moeh run --admissions 600 --rounds 2"):
        print(p.stdout[-2000:], p.stderr[-2000:])
        return
    run_dir = os.path.join(work, "moeh-run")
    p, secs = run_report([run_dir])
    print(f"     (report.py took {secs:.1f} s)")
    if check(p.returncode == 0, f"report of a real run ({p.stderr.strip()})"):
        page = open(os.path.join(run_dir, "report.html"), encoding="utf-8").read()
        text = check_structure(page, [f for f in ALL_FIGS if f != "fig-dp-epsilon"], "real run")
        # the coordinator selects the round of best validation AUROC (a "selection" line)
        sel = [json.loads(ln) for ln in open(os.path.join(run_dir, "metrics.jsonl"),
                                             encoding="utf-8") if '"selected_round"' in ln]
        check(len(sel) == 1 and f"selected round {sel[0]['selected_round']}" in text,
              "real run: the selected round is marked")
        check("mortality" in text and "EHR+notes" in text, "real run: tasks and combinations")
        check_real_roc(run_dir)
        check_real_task_loss(run_dir)
        check("No phase attempt failed" in text, "real run: no retry line, said so")
        rows = page_rows(page)
        for r in (1, 2):
            for ph in ("train", "validation", "test"):
                check(any(x[:2] == [str(r), ph] and x[2].startswith("4: site-1, site-2")
                          and x[3] == "none" for x in rows),
                      f"real run: round {r} {ph}: the 4 sites reported, none dropped out")
        head = ["task", "test AUROC", "validation AUROC", "test loss", "validation loss",
                "test Brier", "validation Brier"]
        per = rows[rows.index(head) + 1:][:len(TASKS)] if head in rows else []
        check([x[0] for x in per] == TASKS and all("\u2013" not in x for x in per),
              f"real run: the per-task table has every value of every task ({per})")


def check_real_task_loss(run_dir):
    """The per-task losses of a real run (from the summed histograms, bins at their centres):
    their mean weighted by each task's labelled rows (the "n" of its calibration line) is the
    exact loss of all tasks ("test_loss", "val_loss") within 1e-3."""
    lines = [json.loads(ln) for ln in open(os.path.join(run_dir, "metrics.jsonl"),
                                            encoding="utf-8")]
    worst, n_checked = 0.0, 0
    for ev in (ln for ln in lines if ln["event"] == "eval"):
        for split, key in (("test", "test_loss"), ("val", "val_loss")):
            n = {ln["task"]: ln["n"] for ln in lines if ln["event"] == "calibration" and
                 ln["round"] == ev["round"] and ln["split"] == split}
            per = {t: ev.get(f"{key}_{t}") for t in TASKS}
            if not check(all(isinstance(per[t], float) for t in TASKS) and set(n) == set(TASKS),
                         f"real run: round {ev['round']} {split}: a loss per task"):
                continue
            est = sum(n[t] * per[t] for t in TASKS) / sum(n.values())
            worst = max(worst, abs(est - ev[key]))
            n_checked += 1
    check(n_checked > 0 and worst < 1e-3,
          f"real run: per-task losses agree with the exact loss (worst {worst:.1e})")


def check_real_roc(run_dir):
    """The "roc" lines of a real run: for every round, split and task with both classes, the
    points go from (0, 0) to (1, 1) without going back, their trapezoid area is the line's AUROC
    within 1e-6, and the test curve's AUROC is the "eval" line's."""
    lines = [json.loads(ln) for ln in open(os.path.join(run_dir, "metrics.jsonl"),
                                            encoding="utf-8")]
    rocs = [ln for ln in lines if ln["event"] == "roc"]
    evals = {ln["round"]: ln for ln in lines if ln["event"] == "eval"}
    keys = {(ln["round"], ln["split"], ln["task"]) for ln in rocs}
    check(len(keys) == len(rocs) and
          keys == {(r, sp, t) for r in evals for sp in ("val", "test") for t in TASKS},
          f"real run: one roc line per round, split and task ({len(rocs)} lines)")
    worst = 0.0
    ok = True
    for ln in rocs:
        x, y = ln["fpr"], ln["tpr"]
        if ln["auroc"] is None:
            ok = ok and not x and not y
            continue
        ok = ok and len(x) == len(y) >= 2 and (x[0], y[0], x[-1], y[-1]) == (0, 0, 1, 1)
        ok = ok and all(x[i] >= x[i - 1] and y[i] >= y[i - 1] for i in range(1, len(x)))
        worst = max(worst, abs(trapezoid(x, y) - ln["auroc"]))
        if ln["split"] == "test":
            ok = ok and ln["auroc"] == evals[ln["round"]]["auroc_" + ln["task"]]
    check(ok, "real run: ROC points monotone from (0,0) to (1,1); test AUROC = eval line's")
    check(worst < 1e-6, f"real run: trapezoid area of the ROC points = AUROC (worst {worst:.2e})")


def main():
    real = "--real" in sys.argv[1:]
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="test_report-")
    try:
        if real:
            test_real(work)
        else:
            test_refusals(work)
            test_exit_codes(work)
            page = test_reports(work)
            if page:
                test_chromium(page, work)
    finally:
        if FAILS and os.environ.get("MOEH_KEEP_TMP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{len(FAILS)} failure(s) in {time.monotonic() - t0:.1f} s")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
