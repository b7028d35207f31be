"""checks: the check-and-summarise helpers shared by the Python test scripts
(test_heterogeneous.py, test_paired_bootstrap.py): each check prints "ok" or "FAIL" with what
it checked, and status() turns the failures into the script's exit status. Scripts that keep
their own list of failed checks (test_check_layers.py, test_results_table.py) end with
summary(their list)."""

failures = []


def check(ok, what):
    """Prints the outcome of one check; a failed one is remembered for status()."""
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def status():
    """0 if every check passed; else says how many failed and returns 1."""
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    return 0


def summary(fails):
    """The exit status of a script whose failed checks are in fails: 1, saying how many failed,
    or 0, saying that all passed."""
    if fails:
        print(f"{len(fails)} check(s) failed")
        return 1
    print("all checks passed")
    return 0
