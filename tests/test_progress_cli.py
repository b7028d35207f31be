#!/usr/bin/env python3
"""test_progress_cli.py - progress of `moeh synth` and `moeh extract` as a user sees it.

With stderr on a pipe (a log, CI) each step writes exactly one summary line (label, amount,
time, rate) and no '\\r' or terminal escape; on a pseudo-terminal the same commands redraw a line
with '\\r', a percent and an ETA, clear it before each log line, and still end each step with its
summary line. Usage: test_progress_cli.py MOEH_BINARY
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

TABLES = ["hosp/patients.csv.gz", "hosp/admissions.csv.gz", "icu/icustays.csv.gz",
          "icu/chartevents.csv.gz", "hosp/labevents.csv.gz", "note/radiology.csv.gz",
          "cxr/mimic-cxr-2.0.0-metadata.csv.gz", "chest X-ray images"]
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def run_pipe(argv):
    env = dict(os.environ, TERM="xterm")
    env.pop("JOURNAL_STREAM", None)
    p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                       timeout=600)
    check(p.returncode == 0, "%s exited %d" % (argv[1], p.returncode))
    return p.stderr.decode("utf-8", "replace")


def run_pty(argv):
    """stderr on a pseudo-terminal (stdout to /dev/null); what the terminal received."""
    master, slave = os.openpty()
    env = dict(os.environ, TERM="xterm")
    env.pop("JOURNAL_STREAM", None)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                         env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not b:
            break
        out += b
    os.close(master)
    check(p.wait(timeout=600) == 0, "%s on a terminal exited %d" % (argv[1], p.returncode))
    return out.decode("utf-8", "replace").replace("\r\n", "\n")  # the tty's ONLCR


def summary_lines(text, label):
    return [l for l in text.split("\n") if re.search(r" info: " + re.escape(label) + r": ", l)]


def main():
    moeh = sys.argv[1]
    d = tempfile.mkdtemp(prefix="moeh_progress_cli_")
    try:
        raw, raw2 = os.path.join(d, "raw"), os.path.join(d, "raw2")
        synth = [moeh, "synth", "--admissions", "200", "--seed", "3", "--image-px", "64"]
        # ---- stderr on a pipe -------------------------------------------------------------
        err = run_pipe(synth + ["--out", raw])
        check("\r" not in err and "\033[" not in err, "synth on a pipe: no \\r, no escape")
        s = summary_lines(err, "synth")
        check(len(s) == 1, "synth on a pipe: one summary line, got %d" % len(s))
        check(bool(s) and re.search(r"synth: 200 admissions in [0-9.]+ s \(", s[0]),
              "synth summary: amount, time, rate: %r" % s[:1])
        extract = [moeh, "extract", "--mimic", raw + "/mimic", "--note", raw + "/note", "--cxr",
                   raw + "/cxr"]
        err = run_pipe(extract + ["--out", os.path.join(d, "ds")])
        check("\r" not in err and "\033[" not in err, "extract on a pipe: no \\r, no escape")
        check("%" not in err and "ETA" not in err, "extract on a pipe: no meter text")
        for t in TABLES:
            s = summary_lines(err, t)
            check(len(s) == 1, "extract on a pipe: one summary line for %s, got %d" % (t, len(s)))
        s = summary_lines(err, "icu/chartevents.csv.gz")
        size = os.path.getsize(raw + "/mimic/icu/chartevents.csv.gz")
        amount = "%.1f MiB" % (size / 1048576) if size >= 1048576 else "%.0f KiB" % (size / 1024)
        check(bool(s) and (": %s in " % amount) in s[0] and " rows, " in s[0],
              "chartevents summary: the compressed size %s and the rows: %r" % (amount, s[:1]))
        # ---- stderr on a pseudo-terminal ---------------------------------------------------
        tty = run_pty(synth + ["--out", raw2])
        draws = re.findall(r"\rsynth: +\d+% \d+/200 admissions, [^\r\n]*ETA [^\r\n]*?\033\[K", tty)
        check(len(draws) >= 1, "synth on a terminal: \\r redraws with a percent and an ETA")
        check(len(summary_lines(tty, "synth")) == 1, "synth on a terminal: one summary line")
        tty = run_pty(extract + ["--out", os.path.join(d, "ds2")])
        for t in TABLES:
            pat = "\r" + re.escape(t) + r": +\d+% [^\r\n]*ETA "
            check(re.search(pat, tty) is not None, "extract on a terminal: a meter for %s" % t)
            check(len(summary_lines(tty, t)) == 1, "extract on a terminal: one summary for %s" % t)
        # every log line starts on a cleared line, never after a meter's text
        for m in re.finditer(r"\d\d:\d\d:\d\d\.\d\d\d moeh (info|warn)", tty):
            before = tty[max(0, m.start() - 4):m.start()]
            check(before == "\r\033[K" or before.endswith("\n") or m.start() == 0,
                  "a log line after %r" % tty[max(0, m.start() - 60):m.start()])
        # the datasets are the same: progress changes nothing else
        for f in sorted(os.listdir(os.path.join(d, "ds"))):
            a = open(os.path.join(d, "ds", f), "rb").read()
            b = open(os.path.join(d, "ds2", f), "rb").read()
            check(a == b or f == "meta.json", "ds/%s equal with and without a terminal" % f)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
