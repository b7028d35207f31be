"""checks: the check-and-summarise helpers shared by the Python test scripts
(test_heterogeneous.py, test_paired_bootstrap.py): each check prints "ok" or "FAIL" with what
it checked, and status() turns the failures into the script's exit status."""

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
