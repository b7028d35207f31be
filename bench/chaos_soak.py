#!/usr/bin/env python3
"""chaos_soak.py - a bounded chaos soak of a real federation on this machine.

Runs moeh-coordinator and N moeh-site-agent processes (CURVE, secure aggregation, a small model)
for R rounds while, every few seconds, a seeded random event strikes: an agent is SIGKILLed and
restarted, an agent is frozen (SIGSTOP) past the phase deadline and thawed, the coordinator is
SIGKILLed and restarted with --resume, or a site's link is black-holed for a while (the site talks
through moeh-faultproxy, toggled with SIGUSR1/SIGUSR2). After every round it records the
coordinator's resident memory and open file descriptors (soak.jsonl). At the end it checks:

  - every round 1..R has exactly one "train" and one "eval" row in metrics.jsonl;
  - the coordinator's RSS and open fds are flat across the soak (the last fifth of the rounds
    against the first fifth after warm-up: RSS within 10% + 8 MiB, fds within N + 4);
  - the run finished (the coordinator exited 0 and every agent exited 0);
  - a clean run that replays the soak's participation (which sites' replies entered each sum
    of each round; moeh-coordinator --fault-replay) has the same model after every round and
    the same final model.npy, byte for byte: the faults lost or corrupted nothing.

Usage: bench/chaos_soak.py [--rounds 200] [--sites 10] ... (--help). Exit 0 when every check
holds, 1 otherwise, 2 on usage errors. The short CI version is ctest's test_chaos_soak_short.
"""
import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.path.join(os.path.dirname(__file__), "..", "build", "bin"),
                    help="where moeh, moeh-coordinator, moeh-site-agent, moeh-keygen and "
                         "moeh-faultproxy are (default: build/bin)")
    ap.add_argument("--out", default="chaos-soak", help="working directory (created; default chaos-soak)")
    ap.add_argument("--rounds", type=int, default=200, help="federated rounds (default 200)")
    ap.add_argument("--sites", type=int, default=10, help="sites (default 10)")
    ap.add_argument("--admissions", type=int, default=1500, help="synthetic admissions (default 1500)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the data and of the chaos (default 1)")
    ap.add_argument("--event-every-s", type=float, default=4.0,
                    help="mean seconds between chaos events (default 4)")
    ap.add_argument("--deadline-ms", type=int, default=6000, help="phase deadline (default 6000)")
    ap.add_argument("--budget-s", type=float, default=3600, help="give up after this long (default 3600)")
    ap.add_argument("--no-rss-check", action="store_true",
                    help="record RSS but do not judge it (a sanitizer build: AddressSanitizer's "
                         "quarantine keeps freed memory, so RSS grows by design)")
    ap.add_argument("--no-replay", action="store_true",
                    help="skip the clean replay of the soak's participation (by default it runs "
                         "after the soak and must give the same model after every round)")
    ap.add_argument("--proxied", type=int, default=2,
                    help="sites that talk through a fault proxy, for link drops (default 2)")
    a = ap.parse_args(argv)
    if a.rounds < 2 or a.sites < 3 or a.proxied > a.sites or a.event_every_s <= 0:
        ap.error("need --rounds >= 2, --sites >= 3, --proxied <= --sites, --event-every-s > 0")
    return a


def run(cmd, log):
    with open(log, "ab") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit("chaos_soak: %s failed (exit %d), see %s" % (" ".join(cmd), r.returncode, log))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


class Soak:
    def __init__(self, a):
        self.a = a
        self.bin = os.path.abspath(a.bin_dir)
        self.out = os.path.abspath(a.out)
        self.logs = os.path.join(self.out, "logs")
        self.rng = random.Random(a.seed)
        self.names = ["site-%d" % (i + 1) for i in range(a.sites)]
        self.agents = {}
        self.proxies = {}
        self.coord = None
        self.coord_starts = 0
        self.events = []
        self.samples = []

    def exe(self, name):
        return os.path.join(self.bin, name)

    def log(self, what):
        line = "%8.1f s  %s" % (time.time() - self.t0, what)
        print(line, flush=True)
        self.events.append(line)

    def prepare(self):
        a = self.a
        os.makedirs(self.logs, exist_ok=True)
        prep = os.path.join(self.logs, "prepare.log")
        raw, ds, sites = (os.path.join(self.out, d) for d in ("mimic-synth", "cohort", "sites"))
        if not os.path.isdir(sites):
            run([self.exe("moeh"), "synth", "--admissions", str(a.admissions), "--seed",
                 str(a.seed), "--image-px", "64", "--out", raw], prep)
            run([self.exe("moeh"), "extract", "--mimic", os.path.join(raw, "mimic"),
                 "--note", os.path.join(raw, "note"), "--cxr", os.path.join(raw, "cxr"),
                 "--image-size", "64", "--out", ds], prep)
            mods = ["ehr", "ehr+notes", "ehr+img", "ehr+notes+img"]
            spec = ",".join("%s:%.6f:%s" % (n, 1.0 / a.sites, mods[i % 4])
                            for i, n in enumerate(self.names))
            run([self.exe("moeh"), "split", "--dataset", ds, "--sites", spec, "--seed",
                 str(a.seed), "--out", sites], prep)
        keys = os.path.join(self.out, "keys")
        os.makedirs(keys, exist_ok=True)
        run([self.exe("moeh-keygen"), "--force", os.path.join(keys, "coordinator")], prep)
        reg = ["[sites]"]
        for n in self.names:
            r = subprocess.run([self.exe("moeh-keygen"), "--force", "--site", n, os.path.join(keys, n)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit("chaos_soak: moeh-keygen --site %s failed: %s" % (n, r.stderr))
            line = [l for l in r.stdout.splitlines() if l.startswith(n + " =")]
            if not line:
                sys.exit("chaos_soak: moeh-keygen printed no registry line for %s" % n)
            reg.append(line[0])
        self.registry = os.path.join(keys, "registry.ini")
        with open(self.registry, "w") as f:
            f.write("\n".join(reg) + "\n")
        self.keys, self.sites_dir = keys, sites
        self.port = free_port()
        self.coord_out = os.path.join(self.out, "coordinator")
        os.makedirs(self.coord_out, exist_ok=True)
        self.clear_run()  # a fresh run each time

    def clear_run(self):
        for fn in os.listdir(self.coord_out):
            os.remove(os.path.join(self.coord_out, fn))

    def start_coordinator(self, resume, out=None, extra=()):
        a = self.a
        self.coord_starts += 1
        cmd = [self.exe("moeh-coordinator"), "--registry", self.registry,
               "--key", os.path.join(self.keys, "coordinator.key"),
               "--bind", "tcp://127.0.0.1:%d" % self.port, "--out", out or self.coord_out,
               "--rounds", str(a.rounds), "--min-sites", str(max(2, (6 * a.sites) // 10)),
               "--wait-sites", str(a.sites), "--join-window", "30s",
               "--deadline-ms", str(a.deadline_ms), "--max-retries", "20",
               "--heartbeat-ms", "1000", "--heartbeat-timeout-ms", "8000", "--secagg",
               "--secagg-allow-2",  # a round where the chaos left only 2 sites still runs
               "--warmup-rounds", "1", "--d-emb", "8", "--d-hidden", "8", "--note-buckets", "256",
               "--batch-size", "64", "--eval-bins", "100", "--table=false", "--seed", str(a.seed)]
        if resume:
            cmd.append("--resume")
        cmd += list(extra)
        log = open(os.path.join(self.logs, "coordinator-%d.log" % self.coord_starts), "wb")
        self.coord = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def start_proxy(self, name):
        p = free_port()
        log = open(os.path.join(self.logs, "proxy-%s.log" % name), "ab")
        proc = subprocess.Popen([self.exe("moeh-faultproxy"), "--listen", "127.0.0.1:%d" % p,
                                 "--target", "127.0.0.1:%d" % self.port],
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.proxies[name] = (proc, p)

    def start_agent(self, name):
        port = self.proxies[name][1] if name in self.proxies else self.port
        cmd = [self.exe("moeh-site-agent"), "--connect", "tcp://127.0.0.1:%d" % port,
               "--site-id", name, "--dataset", os.path.join(self.sites_dir, name),
               "--out", os.path.join(self.logs, "site-" + name),
               "--key", os.path.join(self.keys, name + ".key"),
               "--server-key", os.path.join(self.keys, "coordinator.pub"),
               "--silence-timeout-ms", "10000", "--backoff-max-ms", "1000"]
        log = open(os.path.join(self.logs, "%s.log" % name), "ab")
        self.agents[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def metrics(self, out=None):
        path = os.path.join(out or self.coord_out, "metrics.jsonl")
        rows = []
        try:
            with open(path) as f:
                for i, line in enumerate(f, 1):
                    if not line.endswith("\n"):
                        break  # a row being written
                    rows.append((i, json.loads(line)))
        except FileNotFoundError:
            pass
        return rows

    def chaos(self, pending):
        """One random event; pending collects (time, action) to undo it later."""
        a, now = self.a, time.time()
        kind = self.rng.choices(["kill_agent", "freeze_agent", "kill_coord", "blackhole"],
                                weights=[4, 3, 1, 2 if self.proxies else 0])[0]
        busy = {n for _, _, n in pending}
        free = [n for n in self.names if n not in busy]
        if kind == "kill_coord" and "coordinator" not in busy:
            self.coord.kill()
            self.coord.wait()
            self.log("SIGKILL coordinator")
            pending.append((now + self.rng.uniform(0.5, 2.0), "restart_coord", "coordinator"))
        elif kind == "kill_agent" and free:
            n = self.rng.choice(free)
            self.agents[n].kill()
            self.agents[n].wait()
            self.log("SIGKILL %s" % n)
            pending.append((now + self.rng.uniform(0.5, 3.0), "restart_agent", n))
        elif kind == "freeze_agent" and free:
            n = self.rng.choice(free)
            self.agents[n].send_signal(signal.SIGSTOP)
            dt = a.deadline_ms / 1000.0 + self.rng.uniform(1.0, 3.0)
            self.log("SIGSTOP %s for %.1f s" % (n, dt))
            pending.append((now + dt, "thaw_agent", n))
        elif kind == "blackhole":
            cands = [n for n in self.proxies if n not in busy]
            if cands:
                n = self.rng.choice(cands)
                self.proxies[n][0].send_signal(signal.SIGUSR1)
                dt = self.rng.uniform(2.0, 8.0)
                self.log("black-hole %s's link for %.1f s" % (n, dt))
                pending.append((now + dt, "restore_link", n))

    def undo(self, action, name):
        if action == "restart_coord":
            # killed before its first checkpoint: nothing to resume, start again
            resume = os.path.exists(os.path.join(self.coord_out, "checkpoint.moeh"))
            if not resume:
                self.clear_run()
            self.start_coordinator(resume=resume)
            self.log("coordinator restarted%s" % (" with --resume" if resume else " (no checkpoint yet)"))
        elif action == "restart_agent":
            self.start_agent(name)
            self.log("%s restarted" % name)
        elif action == "thaw_agent":
            self.agents[name].send_signal(signal.SIGCONT)
            self.log("SIGCONT %s" % name)
        elif action == "restore_link":
            self.proxies[name][0].send_signal(signal.SIGUSR2)
            self.log("%s's link restored" % name)

    def soak(self):
        a = self.a
        self.t0 = time.time()
        for n in self.names[:a.proxied]:
            self.start_proxy(n)
        self.start_coordinator(resume=False)
        for n in self.names:
            self.start_agent(n)
        pending, seen_eval, next_event = [], set(), time.time() + self.rng.expovariate(1.0 / a.event_every_s)
        while True:
            now = time.time()
            if now - self.t0 > a.budget_s:
                self.log("budget of %.0f s spent" % a.budget_s)
                return False
            for ev in sorted(p for p in pending if p[0] <= now):
                pending.remove(ev)
                self.undo(ev[1], ev[2])
            for _, row in self.metrics():
                r = row.get("round")
                if row.get("event") == "eval" and r not in seen_eval:
                    seen_eval.add(r)
                    pid = self.coord.pid if self.coord.poll() is None else None
                    s = {"round": r, "t_s": round(now - self.t0, 2),
                         "rss_kb": proc_rss_kb(pid) if pid else None,
                         "fds": proc_fds(pid) if pid else None}
                    self.samples.append(s)
            rc = self.coord.poll()
            if rc is not None and not any(p[1] == "restart_coord" for p in pending):
                if rc == 0:
                    self.log("coordinator finished (exit 0)")
                    break
                self.log("coordinator exited %d unexpectedly" % rc)
                return False
            # chaos from the first evaluated round on (the sites have all joined), and none in
            # the last round: the run must end cleanly
            if now >= next_event and 1 <= len(seen_eval) < a.rounds - 1:
                self.chaos(pending)
                next_event = now + self.rng.expovariate(1.0 / a.event_every_s)
            time.sleep(0.1)
        # thaw and restore whatever is still pending; an agent killed shortly before the end is
        # not restarted: the coordinator is gone, so it could only wait for one until it gives up
        dead = set()
        for ev in sorted(pending):
            if ev[1] == "restart_agent":
                dead.add(ev[2])
                self.log("%s was killed %.1f s before the end: not restarted" % (ev[2], ev[0] - now))
                continue
            self.undo(ev[1], ev[2])
        ok = True
        for n, p in self.agents.items():
            if n in dead:
                continue
            try:
                rc = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = "still running after 30 s"
            if rc != 0:
                self.log("agent %s: exit %s" % (n, rc))
                ok = False
        return ok

    def replay(self):
        """A clean run (no chaos, no proxies) of the same sites, seed and options that replays
        the soak's participation (moeh-coordinator --fault-replay): each phase of each round
        invites only the sites whose replies entered the soak's sums, with the soak's weight
        bound. Nothing lost or corrupted by the faults means the same model after every round
        (the train rows' model_hash) and the same final model.npy, byte for byte."""
        a = self.a
        out = os.path.join(self.out, "replay")
        os.makedirs(out, exist_ok=True)
        for fn in os.listdir(out):
            if os.path.isfile(os.path.join(out, fn)):
                os.remove(os.path.join(out, fn))
        self.stop_all()
        self.proxies, self.agents = {}, {}
        self.port = free_port()
        self.log("replay: a clean run of the soak's participation in %s" % out)
        self.start_coordinator(resume=False, out=out, extra=[
            "--fault-replay", os.path.join(self.coord_out, "metrics.jsonl")])
        for n in self.names:
            self.start_agent(n)
        try:
            rc = self.coord.wait(timeout=a.budget_s)
        except subprocess.TimeoutExpired:
            rc = "still running after the budget"
        for n, p in self.agents.items():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if rc != 0:
            print("FAIL the replay's coordinator exited %s (log: %s/logs)" % (rc, self.out))
            return False
        ok = True
        soak = {row["round"]: row.get("model_hash") for _, row in self.metrics()
                if row.get("event") == "train"}
        again = {row["round"]: row.get("model_hash") for _, row in self.metrics(out)
                 if row.get("event") == "train"}
        differ = [r for r in sorted(soak) if soak[r] is None or soak[r] != again.get(r)]
        if differ:
            ok = False
            print("FAIL the replay's model differs from the soak's after rounds %s (of %d)"
                  % (differ[:20], len(soak)))
        else:
            print("ok   the replay's model equals the soak's after every one of %d rounds "
                  "(model_hash of the train rows)" % len(soak))
        with open(os.path.join(self.coord_out, "model.npy"), "rb") as f1, \
                open(os.path.join(out, "model.npy"), "rb") as f2:
            same = f1.read() == f2.read()
        print("%s final model.npy of the soak and of the clean replay: %s" %
              ("ok  " if same else "FAIL", "identical" if same else "DIFFERENT"))
        return ok and same

    def stop_all(self):
        for p in list(self.agents.values()) + [self.coord] + [q for q, _ in self.proxies.values()]:
            if p and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()

    def check(self):
        a, ok = self.a, True
        train, evals = {}, {}
        for line, row in self.metrics():
            if row.get("event") == "train":
                train.setdefault(row.get("round"), []).append(line)
            if row.get("event") == "eval":
                evals.setdefault(row.get("round"), []).append(line)
        for name, rows in (("train", train), ("eval", evals)):
            missing = [r for r in range(1, a.rounds + 1) if r not in rows]
            dup = {r: l for r, l in rows.items() if len(l) > 1}
            if missing or dup:
                ok = False
                print("FAIL %s rows: missing rounds %s; duplicated %s" % (name, missing[:20], dup))
            else:
                print("ok   every round 1..%d has exactly one %s row" % (a.rounds, name))
        with open(os.path.join(self.out, "soak.jsonl"), "w") as f:
            for s in self.samples:
                f.write(json.dumps(s) + "\n")
        good = [s for s in self.samples if s["rss_kb"] and s["fds"]]
        if len(good) >= 10:
            fifth = max(2, len(good) // 5)
            head, tail = good[2:2 + fifth], good[-fifth:]
            rss0 = statistics.median(s["rss_kb"] for s in head)
            rss1 = statistics.median(s["rss_kb"] for s in tail)
            fd0 = statistics.median(s["fds"] for s in head)
            fd1 = statistics.median(s["fds"] for s in tail)
            flat = (a.no_rss_check or rss1 <= rss0 * 1.10 + 8192) and fd1 <= fd0 + a.sites + 4
            print("%s coordinator RSS %.1f -> %.1f MiB%s, open fds %.0f -> %.0f (median of the "
                  "first and last fifth of %d samples)" % ("ok  " if flat else "FAIL",
                  rss0 / 1024, rss1 / 1024, " (not judged: --no-rss-check)" if a.no_rss_check
                  else "", fd0, fd1, len(good)))
            ok = ok and flat
        else:
            print("FAIL only %d rounds sampled (10 needed to judge RSS/fds flat): run more --rounds" % len(good))
            ok = False
        print("events: %d (coordinator started %d times); log: %s/logs" %
              (len(self.events), self.coord_starts, self.out))
        return ok


def main(argv):
    a = parse_args(argv)
    s = Soak(a)
    s.prepare()
    try:
        finished = s.soak()
    finally:
        s.stop_all()
    ok = s.check() and finished
    if finished and not a.no_replay:
        try:
            ok = s.replay() and ok
        finally:
            s.stop_all()
    print("chaos soak: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
