#!/usr/bin/env python3
"""netns_fed.py - a federation whose coordinator and sites are separate hosts.

Each host (the coordinator and every site) runs in a network namespace of its own, joined to
a bridge that lives in one more namespace (the "switch"); addresses are 10.77.0.0/24 and exist
only inside these namespaces: nothing is added to the caller's namespace, so no route leads
out and no packet can leave. The real binaries run there: moeh-coordinator on 10.77.0.1:7400
with CURVE keys and a site registry, one moeh-site-agent per site, and optionally a
moeh-faultproxy inside a site's namespace (agent -> 127.0.0.1:7500 -> proxy -> coordinator), so
that every byte between that site and the coordinator passes through the proxy's faults.
Link down/up of a host is the switch-side end of its veth going down/up (the host keeps its
address and route; its packets are dropped silently, as in a partition).

Scenarios (--scenario; docs/network-testing.md has the numbers):
  clean      no faults (the reference run)
  delay      100 ms +/- 20 ms each way and 20 Mbit/s in front of every site; the final
             model.npy must equal (byte for byte) that of a clean run made right after
  reset      one site's connection is reset every --reset-every-ms; the run completes
  blackhole  one site black-holed for 30 s from the start of round 2's TRAIN phase; the run
             completes with the others, metrics.jsonl holds the sums of the sites that took part
  coord-down the coordinator's link down 30 s from the start of round 2's TRAIN phase
  partition  every site's link down 45 s from the start of round 2's TRAIN phase
  site-flap  one site's link down 4 s (less than the heartbeat timeout) from the start of round
             2's TRAIN phase: absorbed, every site in every round, model.npy equals a clean run's
--outage-s changes the length of an outage (netns_partition_short is partition with 10 s).
Every run must end with exit code 0, every round in metrics.jsonl, and each round's training
samples/steps and evaluation rows equal to the sums of a set of sites of the size the round
reports (each site's counts come from the coordinator's 'joined' lines); where an outage
excluded no site, the final model must equal a clean run's.

Why Python and not a shell script: the harness waits on log lines with timeouts (no sleep as
synchronisation), parses metrics.jsonl, and must tear down namespaces and reap every process
on any failure or signal; try/finally and a SIGTERM handler do that more reliably than traps.
Standard library only. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); if namespaces cannot be
made, it says so and exits 1: the test FAILS, it never passes silently.

usage: netns_fed.py --bin-dir build/bin --scenario delay [--work DIR] [--keep]
"""
import argparse
import filecmp
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PREFIX = "moehnt"  # namespace names: moehnt-<pid>-<host>
SUBNET = "10.77.0"
COORD_ADDR = SUBNET + ".1"
PORT = 7400
PROXY_PORT = 7500
SITES = [("site-1", 0.34, "ehr"), ("site-2", 0.33, "ehr+notes"), ("site-3", 0.33, "ehr+img")]
MODS = ["ehr", "ehr+notes", "ehr+img", "ehr+notes+img"]


def site_table(n):
    """The 3 sites above, or n sites with equal shares and modality mixes in turn."""
    if n == 3:
        return SITES
    share = float("%.4f" % (1.0 / n))
    return [("site-%d" % (k + 1), share, MODS[k % len(MODS)]) for k in range(n)]


class Fail(Exception):
    pass


def log(msg):
    print("[netns %6.1f s] %s" % (time.monotonic() - T0, msg), flush=True)


def sh(argv, check=True, quiet=False):
    """Runs a command; raises Fail with its stderr when check and it fails."""
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise Fail("%s: exit %d: %s" % (" ".join(argv), r.returncode, r.stderr.strip()))
    if not quiet and r.returncode != 0:
        log("(ignored) %s: %s" % (" ".join(argv), r.stderr.strip()))
    return r


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_namespaces():
    """Deletes namespaces left by an earlier harness that was killed (its pid is gone)."""
    r = sh(["ip", "netns", "list"], check=False, quiet=True)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(PREFIX + r"-(\d+)-", name)
        if m and not pid_alive(int(m.group(1))):
            for pid in sh(["ip", "netns", "pids", name], check=False, quiet=True).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", name], check=False, quiet=True)
            log("removed the stale namespace %s" % name)


class Net:
    """A switch namespace with a bridge, and one namespace per host on it."""

    def __init__(self, n_sites):
        self.tag = "%s-%d" % (PREFIX, os.getpid())
        self.sw = self.tag + "-sw"
        self.hosts = ["coord"] + ["s%d" % (k + 1) for k in range(n_sites)]
        self.made = []

    def ns(self, host):
        return "%s-%s" % (self.tag, host)

    def addr(self, host):
        return COORD_ADDR if host == "coord" else "%s.%d" % (SUBNET, 10 + int(host[1:]))

    def port(self, host):  # the switch-side end of the host's veth
        return "p-" + host

    def up(self):
        try:
            sh(["ip", "netns", "add", self.sw])
        except Fail as e:
            raise Fail("cannot create a network namespace (this test needs root with "
                       "CAP_SYS_ADMIN and CAP_NET_ADMIN): %s" % e)
        self.made.append(self.sw)
        sh(["ip", "-n", self.sw, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", self.sw, "link", "set", "lo", "up"])
        sh(["ip", "-n", self.sw, "link", "set", "br0", "up"])
        for i, h in enumerate(self.hosts):
            ns = self.ns(h)
            sh(["ip", "netns", "add", ns])
            self.made.append(ns)
            # created inside the two namespaces directly: nothing appears in the caller's
            tmp = "mhv%d%d" % (os.getpid() % 100000, i)
            sh(["ip", "link", "add", "name", tmp, "netns", ns, "type", "veth", "peer", "name",
                self.port(h), "netns", self.sw])
            sh(["ip", "-n", ns, "link", "set", tmp, "name", "eth0"])
            sh(["ip", "-n", self.sw, "link", "set", self.port(h), "master", "br0"])
            sh(["ip", "-n", self.sw, "link", "set", self.port(h), "up"])
            sh(["ip", "-n", ns, "addr", "add", self.addr(h) + "/24", "dev", "eth0"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        # every link has carrier (there is no ping here; the agents' reconnects do the rest)
        for h in self.hosts:
            r = sh(["ip", "-n", self.ns(h), "-o", "link", "show", "eth0"])
            if "LOWER_UP" not in r.stdout:
                raise Fail("host %s: eth0 has no carrier: %s" % (h, r.stdout.strip()))
        log("network up: bridge in %s; coordinator %s; sites %s" % (
            self.sw, COORD_ADDR, ", ".join(self.addr(h) for h in self.hosts[1:])))

    def link(self, host, up):
        sh(["ip", "-n", self.sw, "link", "set", "dev", self.port(host), "up" if up else "down"])
        log("link of %s %s" % (host, "UP" if up else "DOWN"))

    def argv(self, host, argv):
        return ["ip", "netns", "exec", self.ns(host)] + argv

    def down(self):
        for ns in reversed(self.made):
            for pid in sh(["ip", "netns", "pids", ns], check=False, quiet=True).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)  # only processes this harness started
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", ns], check=False)
        self.made = []


class Procs:
    """Processes this harness started; every one is stopped and reaped in stop_all()."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, log_path, ready=False, timeout=15):
        """Starts argv with stdout+stderr to log_path. With ready, the program is given
        '--ready-fd N' and this returns (proc, the line it writes there)."""
        rfd = wfd = None
        if ready:
            rfd, wfd = os.pipe()
            argv = argv + ["--ready-fd", str(wfd)]
        out = open(log_path, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             pass_fds=(wfd,) if ready else (), start_new_session=True)
        out.close()
        p.name = name
        self.procs.append(p)
        if not ready:
            return p, None
        os.close(wfd)
        line = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in line and time.monotonic() < deadline:
            r, _, _ = select.select([rfd], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            chunk = os.read(rfd, 256)
            if not chunk:
                break
            line += chunk
        os.close(rfd)
        if b"\n" not in line:
            raise Fail("%s did not start (exit %s); see %s" % (name, p.poll(), log_path))
        return p, line.decode().strip()

    def stop(self, p, timeout=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        return p.returncode

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p, 3.0)
        self.procs = []


def wait_log(path, pattern, timeout, alive=None):
    """Waits until a line of the file matches pattern; returns the match. Fails after timeout
    or when the process alive has exited first."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    m = rx.search(line)
                    if m:
                        return m
        except FileNotFoundError:
            pass
        if alive is not None and alive.poll() is not None:
            raise Fail("waiting for /%s/ in %s: the process exited (%s)" % (
                pattern, path, alive.returncode))
        time.sleep(0.05)  # polling a file, not synchronising on time
    raise Fail("waiting for /%s/ in %s: not there after %.0f s" % (pattern, path, timeout))


def prepare(bin_dir, work, admissions):
    """Synthetic MIMIC-IV -> cohort -> one dataset per site; CURVE keys and the registry."""
    sim = os.path.join(bin_dir, "moeh")
    raw, cohort, sites = (os.path.join(work, d) for d in ("mimic-synth", "cohort", "sites"))
    spec = ",".join("%s:%g:%s" % s for s in SITES)
    t = time.monotonic()
    sh([sim, "synth", "--admissions", str(admissions), "--seed", "1", "--out", raw])
    sh([sim, "extract", "--mimic", raw + "/mimic", "--note", raw + "/note", "--cxr",
        raw + "/cxr", "--out", cohort])
    sh([sim, "split", "--dataset", cohort, "--sites", spec, "--seed", "1", "--out", sites])
    keys = os.path.join(work, "keys")
    os.makedirs(keys, exist_ok=True)
    keygen = os.path.join(bin_dir, "moeh-keygen")
    reg = ["# moeh site registry: SITE_ID = public key", "[sites]"]
    sh([keygen, "--force", os.path.join(keys, "coordinator")])
    for name, _, _ in SITES:
        r = sh([keygen, "--force", "--site", name, os.path.join(keys, name)])
        line = [ln for ln in r.stdout.splitlines() if ln.startswith(name)]
        if not line:
            raise Fail("moeh-keygen --site %s printed no registry line: %r" % (name, r.stdout))
        reg.append(line[-1].strip())
    with open(os.path.join(keys, "registry.ini"), "w") as f:
        f.write("\n".join(reg) + "\n")
    log("data and keys ready in %.1f s (%d admissions, %d sites)" % (
        time.monotonic() - t, admissions, len(SITES)))
    return sites, keys


class Fed:
    """One federated run on the network."""

    def __init__(self, args, net, sites_dir, keys, label):
        self.args, self.net, self.sites_dir, self.keys = args, net, sites_dir, keys
        self.out = os.path.join(args.work, label)
        os.makedirs(self.out, exist_ok=True)
        self.coord_log = os.path.join(self.out, "coordinator.log")
        self.procs = Procs()
        self.proxies = {}
        self.agents = {}
        self.coord = None
        self.label = label
        self.t_end = None

    def run_for(self, seconds):
        """Lets seconds pass (an outage is a duration) or until the coordinator exits."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.coord.poll() is None:
            time.sleep(0.05)
        if self.coord.poll() is not None and self.t_end is None:
            self.t_end = time.monotonic()
            log("[%s] the coordinator exited (%d) while the fault was on" % (
                self.label, self.coord.returncode))

    def start(self, proxy_faults=None):
        a, b = self.args, self.args.bin_dir
        n = len(SITES)
        cargv = [os.path.join(b, "moeh-coordinator"), "--bind", "tcp://%s:%d" % (COORD_ADDR, PORT),
                 "--registry", os.path.join(self.keys, "registry.ini"),
                 "--key", os.path.join(self.keys, "coordinator.key"),
                 "--rounds", str(a.rounds), "--warmup-rounds", "1", "--min-sites", str(n - 1),
                 "--wait-sites", str(n), "--d-emb", "16", "--d-hidden", "16",
                 "--note-buckets", "1024", "--seed", "1", "--secagg", "--out", self.out,
                 "--secagg-allow-2",  # 3 hosts: a round with one cut off runs with the other 2
                 "--join-window", "60s", "--deadline-ms", str(a.deadline_ms),
                 "--heartbeat-ms", "1000", "--heartbeat-timeout-ms", str(a.heartbeat_timeout_ms),
                 "--lr", "0.002"]
        self.t0 = time.monotonic()
        self.coord, ep = self.procs.start("coordinator", self.net.argv("coord", cargv),
                                          self.coord_log, ready=True)
        log("[%s] coordinator listening on %s" % (self.label, ep))
        for k, (name, _, _) in enumerate(SITES):
            host = "s%d" % (k + 1)
            connect = "tcp://%s:%d" % (COORD_ADDR, PORT)
            faults = (proxy_faults or {}).get(name)
            if faults is not None:
                pargv = [os.path.join(b, "moeh-faultproxy"), "--listen",
                         "127.0.0.1:%d" % PROXY_PORT, "--target", "%s:%d" % (COORD_ADDR, PORT),
                         "--verbose"] + faults
                p, addr = self.procs.start("proxy-" + name, self.net.argv(host, pargv),
                                           os.path.join(self.out, "proxy-%s.log" % name),
                                           ready=True)
                self.proxies[name] = p
                connect = "tcp://" + addr
                log("[%s] %s: fault proxy %s in front (%s)" % (self.label, name, addr,
                                                                " ".join(faults)))
            aargv = [os.path.join(b, "moeh-site-agent"), "--connect", connect, "--site-id", name,
                     "--dataset", os.path.join(self.sites_dir, name),
                     "--out", os.path.join(self.out, "site-" + name),
                     "--key", os.path.join(self.keys, name + ".key"),
                     "--server-key", os.path.join(self.keys, "coordinator.pub")]
            self.agents[name], _ = self.procs.start(
                name, self.net.argv(host, aargv), os.path.join(self.out, name + ".log"))

    def signal_proxy(self, name, sig):
        # 'ip netns exec' execs the program itself: the pid is the proxy's
        self.proxies[name].send_signal(sig)
        log("[%s] %s's proxy: %s" % (self.label, name, signal.Signals(sig).name))

    def wait(self, timeout):
        """Waits for the coordinator to exit, then for the agents (they leave on its bye)."""
        try:
            rc = self.coord.wait(timeout=max(1.0, timeout - (time.monotonic() - self.t0)))
        except subprocess.TimeoutExpired:
            raise Fail("[%s] the run did not end within %.0f s" % (self.label, timeout))
        self.seconds = (self.t_end or time.monotonic()) - self.t0
        agents = {}
        for name, p in self.agents.items():
            try:
                agents[name] = p.wait(timeout=max(0.1, 6 - (time.monotonic() - self.t0 -
                                                             self.seconds)))
            except subprocess.TimeoutExpired:
                # never got the coordinator's bye (it was away when the run ended): an agent
                # keeps reconnecting (--give-up-ms 0), so it is stopped here
                self.procs.stop(p)
                agents[name] = "no bye (excluded at the end), stopped"
        self.agent_rc = agents
        proxies = {name: self.procs.stop(p) for name, p in self.proxies.items()}
        for name, prc in proxies.items():
            if prc != 0:
                raise Fail("[%s] %s's proxy did not stop cleanly on SIGTERM (exit %s)" % (
                    self.label, name, prc))
        log("[%s] coordinator exit %d after %.1f s; agents %s" % (
            self.label, rc, self.seconds, agents))
        return rc

    def stop(self):
        self.procs.stop_all()

    def tail(self, n=12):
        try:
            with open(self.coord_log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return "(no log)"


def joined_counts(coord_log):
    counts = {}
    # "(N train / V validation / T test samples)" since protocol 6 (Hello n_val); the sums
    # checked here are of the training and test rows
    rx = re.compile(r"site (\S+) (?:joined|rejoined) \((\d+) train / \d+ validation / "
                    r"(\d+) test samples\)")
    with open(coord_log, errors="replace") as f:
        for line in f:
            m = rx.search(line)
            if m:
                counts[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return counts


def subset_with_sum(values, k, target):
    """[a set of k sites whose value tuples add up to target] or [] when there is none. Up to
    10 sites it tries every set (with these counts the set is unique); beyond, a dynamic
    programme over (size, sums) says whether one exists and the set is reported as '?'."""
    names = sorted(values)
    if k == len(names) or len(names) <= 10:
        return [set(c) for c in itertools.combinations(names, k)
                if tuple(map(sum, zip(*(values[s] for s in c)))) == target] if k else (
            [set()] if all(t == 0 for t in target) else [])
    reach = {(0, tuple(0 for _ in target))}
    for s in names:
        v = values[s]
        reach |= {(n + 1, tuple(a + b for a, b in zip(acc, v))) for n, acc in reach
                  if n < k and all(a + b <= t for a, b, t in zip(acc, v, target))}
    return [{"?"}] if (k, tuple(target)) in reach else []


def check_sums(fed, rounds, batch=32, epochs=1):
    """Every round is in metrics.jsonl once, and its training samples/steps and evaluation rows
    are the sums of a set of exactly as many sites as it reports. Returns {round: (train sites,
    eval sites)}."""
    counts = joined_counts(fed.coord_log)
    if len(counts) != len(SITES):
        raise Fail("[%s] joined sites in the log: %s" % (fed.label, counts))
    events = [json.loads(ln) for ln in open(os.path.join(fed.out, "metrics.jsonl")) if ln.strip()]
    took = {}
    for r in range(1, rounds + 1):
        tr = [e for e in events if e.get("event") == "train" and e.get("round") == r]
        ev = [e for e in events if e.get("event") == "eval" and e.get("round") == r]
        gate = [e for e in events if e.get("event") == "gate" and e.get("round") == r]
        if len(tr) != 1 or len(ev) != 1 or len(gate) != 1:
            raise Fail("[%s] round %d: %d train, %d eval, %d gate lines in metrics.jsonl "
                       "(want 1 each)" % (fed.label, r, len(tr), len(ev), len(gate)))
        tr, ev, gate = tr[0], ev[0], gate[0]
        steps_of = {s: epochs * -(-c[0] // batch) for s, c in counts.items()}
        rows = sum(v["rows"] for k, v in gate.items() if isinstance(v, dict) and "rows" in v)
        train_key = {s: (counts[s][0], steps_of[s]) for s in counts}
        eval_key = {s: (counts[s][1],) for s in counts}
        train_set = subset_with_sum(train_key, tr["sites"], (tr["samples"], tr["steps"]))
        eval_set = subset_with_sum(eval_key, ev["sites"], (rows,))
        if not train_set:
            raise Fail("[%s] round %d: %d training samples / %d steps are not the sum of any "
                       "%d sites (%s)" % (fed.label, r, tr["samples"], tr["steps"], tr["sites"],
                                          counts))
        if not eval_set:
            raise Fail("[%s] round %d: %d evaluation rows are not the sum of any %d sites (%s)" %
                       (fed.label, r, rows, ev["sites"], counts))
        took[r] = (sorted(train_set[0]), sorted(eval_set[0]))
        log("[%s] round %d: trained by %s (%d samples, %d steps), evaluated by %s (%d rows)" % (
            fed.label, r, "+".join(took[r][0]), tr["samples"], tr["steps"],
            "+".join(took[r][1]), rows))
    return took


def run_one(args, net, sites_dir, keys, label, faults=None, action=None, strict=True):
    """One run; with strict every agent must end on its own with exit code 0."""
    fed = Fed(args, net, sites_dir, keys, label)
    try:
        fed.start(faults)
        if action:
            action(fed)
        rc = fed.wait(args.run_timeout)
        if rc != 0:
            raise Fail("[%s] the coordinator exited with %d after %.1f s; its log ends:\n%s" % (
                label, rc, fed.seconds, fed.tail()))
        bad = {s: c for s, c in fed.agent_rc.items() if c != 0}
        if bad and strict:
            raise Fail("[%s] agents that did not end cleanly: %s" % (label, bad))
        took = check_sums(fed, args.rounds)
        return fed, took
    finally:
        fed.stop()


def scenario(args, net, sites_dir, keys):
    s, n_rounds = args.scenario, args.rounds
    all_sites = [x[0] for x in SITES]
    if s == "clean":
        run_one(args, net, sites_dir, keys, "clean")
    elif s == "delay":
        f = ["--delay-ms", "100", "--jitter-ms", "20", "--rate-kbit", "20000"]
        fed, took = run_one(args, net, sites_dir, keys, "delay", {n: f for n in all_sites})
        ref, rtook = run_one(args, net, sites_dir, keys, "clean")
        for r in range(1, n_rounds + 1):
            if took[r][0] != all_sites or rtook[r][0] != all_sites:
                raise Fail("round %d: not every site trained (delay %s, clean %s)" % (
                    r, took[r][0], rtook[r][0]))
        a, b = os.path.join(fed.out, "model.npy"), os.path.join(ref.out, "model.npy")
        if not filecmp.cmp(a, b, shallow=False):
            raise Fail("the final model under delay + rate cap differs from the clean run's "
                       "(%s vs %s)" % (a, b))
        log("model.npy under 100 +/- 20 ms and 20 Mbit/s equals the clean run's "
            "(%d bytes); %.1f s vs %.1f s" % (os.path.getsize(a), fed.seconds, ref.seconds))
    elif s == "reset":
        # the delay in front of every site makes a round last ~2 s: several resets per run
        f = args.reset_extra.split()
        faults = {n: f for n in all_sites}
        faults["site-1"] = f + ["--reset-every-ms", str(args.reset_every_ms)]
        fed, took = run_one(args, net, sites_dir, keys, "reset", faults, strict=False)
        n = count_in(os.path.join(fed.out, "proxy-site-1.log"), "closed (--reset-every-ms)")
        if n < 2:
            raise Fail("the proxy reset %d connections during the run (%.1f s), want >= 2" % (
                n, fed.seconds))
        rejoins = count_in(fed.coord_log, "site site-1 rejoined")
        if not any("site-1" in took[r][0] for r in took):
            raise Fail("site-1 trained in no round: it never came back after a reset")
        log("site-1's connection was reset %d times, it rejoined %d times; the run completed "
            "in %.1f s; site-1 trained in rounds %s" % (
                n, rejoins, fed.seconds,
                [r for r in sorted(took) if "site-1" in took[r][0]]))
    elif s == "blackhole":
        victim = "site-2"

        def act(fed):
            wait_log(fed.coord_log, r"round 2: train phase", 120, fed.coord)
            fed.signal_proxy(victim, signal.SIGUSR1)
            fed.run_for(args.outage_s)
            fed.signal_proxy(victim, signal.SIGUSR2)

        # 100 +/- 20 ms in front of every site makes a round last ~2 s, so that the run outlives
        # the black hole and the victim can come back; 300 ms on the victim's uploads means its
        # round-2 update cannot slip out before the black hole starts (training takes ~50 ms)
        f = ["--delay-ms", "100", "--jitter-ms", "20"]
        faults = {n: f for n in all_sites}
        faults[victim] = f + ["--up-delay-ms", "300"]
        fed, took = run_one(args, net, sites_dir, keys, "blackhole", faults, act)
        if victim in took[2][0]:
            raise Fail("round 2 was trained by %s although %s was black-holed" % (
                took[2][0], victim))
        back = [r for r in sorted(took) if r > 2 and victim in took[r][0]]
        if not back:
            raise Fail("%s never trained again after the black hole (rounds %s)" % (
                victim, {r: t[0] for r, t in took.items()}))
        log("%s black-holed %.0f s from round 2's TRAIN: round 2 trained by %s; %s trained "
            "again from round %d; run %.1f s" % (victim, args.outage_s, "+".join(took[2][0]),
                                                  victim, back[0], fed.seconds))
    elif s == "site-flap":
        victim = "s3"

        def act(fed):
            wait_log(fed.coord_log, r"round 2: train phase", 120, fed.coord)
            net.link(victim, False)
            try:
                fed.run_for(args.outage_s)
            finally:
                net.link(victim, True)

        fed, took = run_one(args, net, sites_dir, keys, "site-flap", None, act)
        ref, rtook = run_one(args, net, sites_dir, keys, "clean")
        for r in range(1, n_rounds + 1):
            if took[r][0] != all_sites:
                raise Fail("round %d was trained by %s only: the %.0f s outage was not absorbed"
                           % (r, took[r][0], args.outage_s))
        a, b = os.path.join(fed.out, "model.npy"), os.path.join(ref.out, "model.npy")
        if not filecmp.cmp(a, b, shallow=False):
            raise Fail("the final model after the outage differs from the clean run's")
        log("site-3's link down %.0f s in round 2's TRAIN was absorbed: every site in every "
            "round, model.npy equals the clean run's; %.1f s vs %.1f s" % (
                args.outage_s, fed.seconds, ref.seconds))
    elif s in ("coord-down", "partition"):
        hosts = ["coord"] if s == "coord-down" else ["s%d" % (k + 1) for k in range(len(SITES))]

        def act(fed):
            wait_log(fed.coord_log, r"round 2: train phase", 120, fed.coord)
            for h in hosts:
                net.link(h, False)
            t = time.monotonic()
            try:
                fed.run_for(args.outage_s)
                if fed.coord.poll() is not None:
                    log("the coordinator exited %.1f s into the outage (exit %d)" % (
                        time.monotonic() - t, fed.coord.returncode))
            finally:
                for h in hosts:
                    net.link(h, True)

        fed, took = run_one(args, net, sites_dir, keys, s, None, act, strict=False)
        retries = count_in(fed.coord_log, "; retry ")
        if all(took[r][0] == all_sites and took[r][1] == all_sites for r in took):
            # no site was excluded: the model must be the clean run's
            ref, _ = run_one(args, net, sites_dir, keys, "clean")
            mine, clean = train_rows(fed.out), train_rows(ref.out)
            differ = [r for r in sorted(clean) if mine.get(r, {}).get("model_hash") !=
                      clean[r].get("model_hash")]
            if differ or not clean:
                raise Fail("no site was excluded from training, yet the model differs from the "
                           "clean run's after rounds %s" % differ)
            # the validation sums choose the final model (the selected round): equal only when
            # every site validated in every round (an outage in VALIDATE restarts the phase
            # once the sites it needs are back, possibly without all of them)
            short = {r: v for r, v in val_sites(fed.out).items() if v != all_sites}
            a, b = os.path.join(fed.out, "model.npy"), os.path.join(ref.out, "model.npy")
            if not short and not filecmp.cmp(a, b, shallow=False):
                raise Fail("no site was excluded, yet the final model differs from the clean "
                           "run's")
            log("%s for %.0f s survived with %d phase retries; every site trained and evaluated "
                "in every round; the model equals the clean run's after every round%s; run "
                "%.1f s" % (s, args.outage_s, retries,
                            "; validation of rounds %s by %s only, so the selected round may "
                            "differ" % (sorted(short), short) if short else
                            ", and model.npy too", fed.seconds))
        else:
            log("%s for %.0f s survived with %d phase retries; run %.1f s" % (
                s, args.outage_s, retries, fed.seconds))
    else:
        raise Fail("unknown scenario %r" % s)


def metrics_rows(out, event):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [j for j in (json.loads(line) for line in f) if j.get("event") == event]


def train_rows(out):
    """round -> the train row (its contributors and model_hash)."""
    return {j["round"]: j for j in metrics_rows(out, "train")}


def val_sites(out):
    """round -> the sites whose validation histograms were summed (sorted, as took lists)."""
    return {j["round"]: sorted(j["val_contributors"]) for j in metrics_rows(out, "eval")
            if "val_contributors" in j}


def count_in(path, needle):
    try:
        with open(path, errors="replace") as f:
            return sum(needle in ln for ln in f)
    except FileNotFoundError:
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", required=True, help="directory of the moeh binaries")
    ap.add_argument("--scenario", required=True,
                    choices=["clean", "delay", "reset", "blackhole", "site-flap", "coord-down",
                             "partition"])
    ap.add_argument("--work", help="working directory (default: a new one under $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--sites", type=int, default=3,
                    help="sites (default 3: EHR / EHR+notes / EHR+images; otherwise equal shares "
                         "with the modality mixes in turn)")
    ap.add_argument("--admissions", type=int, default=None,
                    help="admissions of the synthetic MIMIC-IV (default max(600, 200 x sites))")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds (default 3; reset 6; blackhole 14, so that the run outlives "
                         "the black hole)")
    ap.add_argument("--deadline-ms", type=int, default=60000)
    ap.add_argument("--heartbeat-timeout-ms", type=int, default=15000)
    ap.add_argument("--outage-s", type=float, default=None,
                    help="black hole / link-down length (default 30; partition 45; "
                         "site-flap 4)")
    ap.add_argument("--reset-every-ms", type=int, default=4000)
    ap.add_argument("--reset-extra", default="--delay-ms 100 --jitter-ms 20",
                    help="faults in front of every site in the reset scenario (they make the "
                         "run long enough to see several resets)")
    ap.add_argument("--run-timeout", type=float, default=150.0,
                    help="fail a run that takes longer (s)")
    args = ap.parse_args()
    global SITES
    if not 3 <= args.sites <= 200:  # the scenarios name site-1..site-3
        print("netns_fed: --sites must be 3..200")
        return 2
    SITES = site_table(args.sites)
    if args.admissions is None:
        args.admissions = max(600, 200 * args.sites)
    if args.rounds is None:
        args.rounds = {"reset": 6, "blackhole": 14}.get(args.scenario, 3)
    if args.outage_s is None:
        args.outage_s = {"partition": 45.0, "site-flap": 4.0}.get(args.scenario, 30.0)
    args.bin_dir = os.path.abspath(args.bin_dir)
    for b in ("moeh-coordinator", "moeh-site-agent", "moeh", "moeh-keygen",
              "moeh-faultproxy"):
        if not os.access(os.path.join(args.bin_dir, b), os.X_OK):
            print("netns_fed: %s/%s is missing: build it first" % (args.bin_dir, b))
            return 1
    made_work = args.work is None
    if made_work:
        args.work = tempfile.mkdtemp(prefix="moeh-netns-%s-" % args.scenario)
    os.makedirs(args.work, exist_ok=True)
    args.work = os.path.abspath(args.work)

    def on_term(sig, frame):
        raise Fail("stopped by signal %d" % sig)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    net = Net(len(SITES))
    rc = 1
    try:
        if os.geteuid() != 0:
            raise Fail("not root: network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN; "
                       "this test FAILS rather than pass without running")
        reap_stale_namespaces()
        net.up()  # first: a machine that refuses namespaces fails at once
        sites_dir, keys = prepare(args.bin_dir, args.work, args.admissions)
        scenario(args, net, sites_dir, keys)
        log("PASS %s in %.1f s" % (args.scenario, time.monotonic() - T0))
        rc = 0
    except Fail as e:
        log("FAIL %s: %s" % (args.scenario, e))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        net.down()
        if made_work and not args.keep and rc == 0:
            shutil.rmtree(args.work, ignore_errors=True)
        elif rc != 0 or args.keep:
            log("working directory kept: %s" % args.work)
    return rc


T0 = time.monotonic()
if __name__ == "__main__":
    sys.exit(main())
