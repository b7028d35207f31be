"""report_data.py - reading a run for report.py: metrics.jsonl into a Run (one Line per
record, checked field by field) and config.json, with file:line in every InputError.

Split from report.py (which draws and writes the page) so that neither file is over 1,000
lines; report.py imports this module from its own directory.
"""
import html
import json
import math

COMBOS = ["E", "N", "EN", "I", "EI", "NI", "ENI"]  # moeh_schema.h order; expert k <-> combo k
MODALITY = {"E": "EHR", "N": "notes", "I": "X-ray"}
# the two evaluated splits: key in the metrics, name on the page, line style, colour
SPLITS = (("test", "test", "-", "C0"), ("val", "validation", ":", "C1"))


class InputError(Exception):
    """Bad input: the message names the file and line."""


def esc(s):
    return html.escape(str(s), quote=True)


def show(s):
    """A string from a file, safe on a terminal (no control characters), at most 60 chars."""
    s = ascii(str(s))[1:-1]
    return s if len(s) <= 60 else s[:57] + "..."


def combo_label(c):
    return "+".join(MODALITY.get(ch, ch) for ch in c) if set(c) <= set(MODALITY) else c


def reject_constant(name):
    raise ValueError(f"{name} is not JSON (a non-finite number must be written as null)")


def parse_json(text, where):
    try:
        return json.loads(text, parse_constant=reject_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{where}: not well-formed JSON: {e}") from None


class Line:
    """One metrics line with typed getters that name file:line when a field has a wrong type."""

    def __init__(self, obj, where):
        self.obj, self.where = obj, where

    def num(self, key):
        v = self.obj.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{self.where}: field '{show(key)}' should be a number or null")
        if not math.isfinite(float(v)):
            raise InputError(f"{self.where}: field '{show(key)}' is out of range")
        return float(v)

    def int(self, key, required=False):
        v = self.obj.get(key)
        if v is None and not required:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputError(f"{self.where}: field '{show(key)}' should be a non-negative integer")
        return v

    def ids(self, key):
        """A list of site ids, or None when the line has no such field."""
        v = self.obj.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InputError(f"{self.where}: field '{show(key)}' should be a list of site ids")
        return v

    def str(self, key):
        v = self.obj.get(key)
        if v is None:
            return None
        if not isinstance(v, str):
            raise InputError(f"{self.where}: field '{show(key)}' should be a string")
        return v


class Run:
    """What the report shows, gathered from metrics.jsonl (per round, keyed by round number)."""

    def __init__(self):
        self.evals, self.trains, self.uploads, self.gates = {}, {}, {}, {}
        self.tasks = {}  # round -> task -> {"auroc": x, "E": x, ...}
        # round -> split ("test", "val") -> task -> (brier, ece, [(lo, hi, n, mean_p, observed)])
        self.calib = {}
        self.roc = {}  # round -> split -> task -> (auroc, [fpr], [tpr], n_pos, n_neg)
        self.task_names = []
        self.site_update, self.site_eval = {}, {}  # round -> {site: line}
        self.site_gone = []  # (round, site, why)
        self.retries = []  # "retry" lines: a phase attempt that failed (coordinator.c)
        self.site_metrics = {}  # round -> why (per-site rows unavailable)
        self.stats = None
        self.other = {}  # unknown event -> count
        self.selected = None  # (round, where, why)
        self.n_lines = 0
        self.repeated = set()  # rounds with more than one "eval" line (a resumed run)


def read_metrics(path):
    run = Run()
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{where}: not UTF-8 text") from None
            if not text.strip():
                continue
            obj = parse_json(text, where)
            if not isinstance(obj, dict):
                raise InputError(f"{where}: a metrics line must be a JSON object")
            add_line(run, Line(obj, where))
            run.n_lines += 1
    if run.n_lines == 0:
        raise InputError(f"{path}: empty: the run wrote no metrics (did it start?)")
    if not run.evals:
        raise InputError(f"{path}: no \"eval\" line: the run finished no round")
    return run


def add_line(run, ln):
    ev = ln.str("event")
    if ev is None:
        raise InputError(f"{ln.where}: no \"event\" field")
    # a future model-selection record (issue 11, item 1) may sit on any line
    if "selected_round" in ln.obj:
        r = ln.int("selected_round", required=True)
        why = ln.str("why") or ln.str("criterion") or ln.str("selected_by")
        run.selected = (r, ln.where, why)
    if ev in ("eval", "train", "uploads", "gate", "task", "site_update", "site_eval",
              "site_metrics", "site_gone", "calibration", "roc", "retry"):
        r = ln.int("round", required=True)
    if ev == "eval":
        if r in run.evals:
            run.repeated.add(r)
        run.evals[r] = ln
    elif ev == "train":
        run.trains[r] = ln
    elif ev == "uploads":
        run.uploads[r] = ln
    elif ev == "task":
        t = ln.str("task")
        if t is None:
            raise InputError(f"{ln.where}: a \"task\" line without its task")
        if t not in run.task_names:
            run.task_names.append(t)
        row = {"auroc": ln.num("auroc")}
        for c in COMBOS:
            row[c] = ln.num("auroc_" + c)
        run.tasks.setdefault(r, {})[t] = row
    elif ev == "calibration":
        t, split = ln.str("task"), ln.str("split") or "test"  # no split: a run from before "val"
        if t is None:
            raise InputError(f"{ln.where}: a \"calibration\" line without its task")
        bins = ln.obj.get("bins")
        if not isinstance(bins, list):
            raise InputError(f"{ln.where}: \"bins\" should be a list of "
                             "{\"lo\", \"hi\", \"n\", \"mean_p\", \"observed\"}")
        rows = []
        for i, b in enumerate(bins):
            if not isinstance(b, dict):
                raise InputError(f"{ln.where}: calibration bin {i} is not an object")
            sub = Line(b, f"{ln.where} (calibration bin {i})")
            rows.append((sub.num("lo"), sub.num("hi"), sub.int("n") or 0, sub.num("mean_p"),
                         sub.num("observed")))
        run.calib.setdefault(r, {}).setdefault(split, {})[t] = (ln.num("brier"), ln.num("ece"),
                                                                rows)
    elif ev == "roc":
        t, split = ln.str("task"), ln.str("split") or "test"
        if t is None:
            raise InputError(f"{ln.where}: a \"roc\" line without its task")
        pts = []
        for key in ("fpr", "tpr"):
            v = ln.obj.get(key)
            if not isinstance(v, list) or not all(
                    not isinstance(x, bool) and isinstance(x, (int, float)) and 0 <= x <= 1
                    for x in v):
                raise InputError(f"{ln.where}: \"{key}\" should be a list of numbers in [0, 1]")
            pts.append([float(x) for x in v])
        if len(pts[0]) != len(pts[1]):
            raise InputError(f"{ln.where}: \"fpr\" has {len(pts[0])} points, \"tpr\" "
                             f"{len(pts[1])}: expected as many")
        run.roc.setdefault(r, {}).setdefault(split, {})[t] = (
            ln.num("auroc"), pts[0], pts[1], ln.int("n_pos"), ln.int("n_neg"))
    elif ev == "gate":
        g = {}
        for c, v in ln.obj.items():
            if c in ("event", "round"):
                continue
            if not isinstance(v, dict) or not isinstance(v.get("weights"), list):
                raise InputError(f"{ln.where}: gate entry '{show(c)}' should be "
                                 "{\"rows\": N, \"weights\": [...]}")
            sub = Line(v, f"{ln.where} (gate '{show(c)}')")
            w = []
            for x in v["weights"]:
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                    raise InputError(f"{ln.where}: gate '{show(c)}': a weight is not a number")
                w.append(float(x))
            g[c] = (sub.int("rows") or 0, w)
        run.gates[r] = g
    elif ev in ("site_update", "site_eval"):
        s = ln.str("site")
        if s is None:
            raise InputError(f"{ln.where}: a \"{show(ev)}\" line without its site")
        (run.site_update if ev == "site_update" else run.site_eval).setdefault(r, {})[s] = ln
    elif ev == "site_gone":
        run.site_gone.append((r, ln.str("site") or "?", ln.str("why") or ""))
    elif ev == "retry":
        run.retries.append((r, ln.str("phase") or "?", ln.str("outcome") or "?",
                            ln.int("attempt"), ln.int("max_retries"), ln.int("connected"),
                            ln.int("needed"), ln.str("why") or ""))
    elif ev == "site_metrics":
        if ln.obj.get("available") is False:
            run.site_metrics[r] = ln.str("why") or ""
    elif ev == "stats":
        run.stats = ln
    else:
        run.other[ev] = run.other.get(ev, 0) + 1


def read_config(path):
    """The config.json object, or None when the file is missing."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    try:
        obj = json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}:{e.colno}: not well-formed JSON: {e.msg}") from None
    except (ValueError, RecursionError) as e:
        raise InputError(f"{path}: not well-formed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: should be a JSON object")
    return obj
