#!/usr/bin/env python3
"""test_check_layers.py - scripts/check_layers.py on small made-up trees: a downward and a
sideways edge pass; an upward edge, a cycle between folders of one floor, an unknown folder and
an include that names no file fail, naming the edge and the file:line; a known edge is printed
and excused, also where it closes a cycle. Standard library only; run by ctest
(tests/scripts_tests.cmake), beside the check of the real tree (check_layers)."""
import io
import os
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.join(here, "..", "scripts"))
import check_layers as cl  # noqa: E402
from checks import summary  # noqa: E402  (tests/checks.py)

FAILS = []


def expect(cond, what, text=""):
    if not cond:
        FAILS.append(what)
        print("FAIL:", what)
        if text:
            print(text)


def run(files):
    """check_layers on a tree of {path: text}; (exit status, printed text)."""
    with tempfile.TemporaryDirectory(prefix="moeh-layers-") as root:
        for path, text in files.items():
            os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
            with open(os.path.join(root, path), "w") as f:
                f.write(text)
        out = io.StringIO()
        rc = cl.check(root, out=out)
        return rc, out.getvalue()


BASE = {
    "common/moeh_common.h": "int x;\n",
    "model/moeh_nn.h": '#include "moeh_common.h"\n',
    "data/moeh_dataset.h": '#include "moeh_common.h"\n',
    "train/moeh_trainer.h": '#include "moeh_dataset.h"\n#include "moeh_nn.h"\n',
    "fed/moeh_dp.h": "int dp;\n",
    "proto/moeh_wire.h": '#include "moeh_common.h"\n',
    "sim/cmd.c": '#include "moeh_trainer.h"\n#include "moeh_wire.h"\n#include <stdio.h>\n',
}


def main():
    rc, text = run(BASE)
    expect(rc == 0, "a tree whose includes run down passes", text)
    expect("none upward, no cycle" in text, "the pass is reported", text)

    rc, text = run(dict(BASE, **{"model/nn.c": '#include "moeh_nn.h"\n\n#include "moeh_trainer.h"\n'}))
    expect(rc == 1, "model -> train (upward) fails", text)
    expect("upward edge model -> train: model/nn.c:3 (moeh_trainer.h)" in text,
           "the upward edge is named with file:line", text)

    cyc = dict(BASE, **{"proto/w.c": '#include "moeh_trainer.h"\n',
                        "train/t.c": '#include "moeh_wire.h"\n'})
    rc, text = run(cyc)
    expect(rc == 1, "train <-> proto (one floor) fails", text)
    expect("cycle between folders: proto -> train (proto/w.c:1" in text, "the cycle is named", text)
    rc, text = run(dict(BASE, **{"train/t.c": '#include "moeh_wire.h"\n'}))
    expect(rc == 0, "train -> proto alone (sideways) passes", text)
    rc, text = run(dict(BASE, **{"proto/w.c": '#include "moeh_dp.h"\n'}))
    expect(rc == 0, "proto -> fed (downward) passes", text)
    rc, text = run(dict(BASE, **{"fed/s.c": '#include "moeh_wire.h"\n'}))
    expect(rc == 1 and "upward edge fed -> proto: fed/s.c:1 (moeh_wire.h)" in text,
           "fed -> proto (upward) fails", text)

    rc, text = run(dict(BASE, **{"newlib/x.c": '#include "moeh_common.h"\n'}))
    expect(rc == 1 and "newlib/x.c: folder 'newlib' is not in LAYERS" in text,
           "a folder outside LAYERS fails", text)

    rc, text = run(dict(BASE, **{"sim/y.c": '#include "nowhere.h"\n'}))
    expect(rc == 1 and 'sim/y.c:1: #include "nowhere.h" names no file' in text,
           "an include of no file fails", text)

    # the real tree has no known edge left; a made-up one is printed, not failed, and closes
    # no cycle
    expect(cl.KNOWN_EDGES == {}, "no upward edge is excused in the real table")
    saved = cl.KNOWN_EDGES
    cl.KNOWN_EDGES = {("fed", "proto"): "made up for this test"}
    try:
        known = dict(BASE, **{"fed/secsum.c": '#include "moeh_wire.h"\n',
                              "proto/wire.c": '#include "moeh_dp.h"\n'})
        rc, text = run(known)
        expect(rc == 0, "a known upward edge passes", text)
        expect("known upward edge fed -> proto: fed/secsum.c:1 (moeh_wire.h)" in text,
               "the known edge is printed", text)
        rc, text = run(BASE)
        expect("known edge fed -> proto is gone" in text, "a known edge that is gone is noted",
               text)
    finally:
        cl.KNOWN_EDGES = saved

    # the generated protobuf header belongs to proto/
    rc, text = run(dict(BASE, **{"common/bad.c": '#include "moeh.pb-c.h"\n'}))
    expect(rc == 1 and "upward edge common -> proto" in text, "moeh.pb-c.h is proto's", text)

    return summary(FAILS)


if __name__ == "__main__":
    sys.exit(main())
