#!/usr/bin/python3
"""test_modelfile_torch.py - the model file in PyTorch (docs/model-file.md).

Makes a small synthetic cohort with the moeh binary (synth, extract), trains the default model
for one epoch (`moeh train`, which writes model.safetensors), scores the cohort with
`moeh predict`, then, in Python:
  - reads the file with a safetensors reader written here from the standard library alone
    (struct + json: u64 header length, JSON header, raw little-endian F32 data), checking the
    format rules (offsets in range, tiling the data, no overlap) and the metadata;
  - loads the tensors into MoEHealth, a PyTorch reference implementation of the default model
    (nn.GRU, F.embedding_bag, F.conv2d, F.max_pool2d, softmax gate), normalises the dataset
    with norm.mean / norm.std exactly as the C trainer does, and runs it in float64;
  - requires every probability and gate weight to match the C predictions within 1e-4 and the
    chosen expert to be the argmax of the gate.

Usage: test_modelfile_torch.py [--bin-dir DIR] [--bench ROWS]
MOEH_BIN_DIR or --bin-dir locates the moeh binary. --bench ROWS also times the C forward and
the torch forward on a cohort of ROWS admissions and prints rows/s and their ratio
(bench/predict.sh).
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

TOL = 1e-4


# ---- a stdlib-only safetensors reader ---------------------------------------------------------

def read_safetensors(path):
    """Returns (tensors {name: (shape, bytes)}, metadata {str: str}); raises ValueError on any
    violation of the format rules."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError("%s: too short" % path)
    (hl,) = struct.unpack("<Q", blob[:8])
    if hl > len(blob) - 8:
        raise ValueError("%s: header length %d exceeds the file" % (path, hl))
    header = json.loads(blob[8:8 + hl].decode("utf-8"))
    data = blob[8 + hl:]
    meta = header.pop("__metadata__", {})
    if not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("%s: __metadata__ values must be strings" % path)
    spans, tensors = [], {}
    for name, t in header.items():
        if t["dtype"] != "F32":
            raise ValueError("%s: %s: dtype %s" % (path, name, t["dtype"]))
        b, e = t["data_offsets"]
        n = 1
        for s in t["shape"]:
            n *= s
        if not (0 <= b <= e <= len(data)) or e - b != 4 * n:
            raise ValueError("%s: %s: bad data_offsets %r" % (path, name, (b, e)))
        spans.append((b, e, name))
        tensors[name] = (tuple(t["shape"]), data[b:e])
    at = 0
    for b, e, name in sorted(spans):
        if b != at:
            raise ValueError("%s: %s: offsets leave a gap or overlap at %d" % (path, name, at))
        at = e
    if at != len(data):
        raise ValueError("%s: the tensors do not cover the data" % path)
    return tensors, meta


def to_torch(shape, raw):
    """F32 little-endian bytes -> a float64 tensor of that shape."""
    a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    return torch.from_numpy(a.reshape(shape) if shape else a.reshape(()))


# ---- the reference model -----------------------------------------------------------------------

class MoEHealth(torch.nn.Module):
    """MoE-Health as moeh builds it (model/moe.c, docs/model.md): EHR encoder (static linear+ReLU,
    GRU over [value, mask, delta], fused by linear+ReLU), notes encoder (mean embedding bag,
    linear+ReLU), image encoder (three 3x3 conv+ReLU, 2x2 max pool after the first two, global
    average pool, linear+ReLU), learned embeddings for absent modalities, 7 expert MLPs and a
    softmax gate over [e_ehr, e_notes, e_img, availability], one logit per task."""

    def __init__(self, cfg, tensors):
        super().__init__()
        self.cfg = cfg
        self.d = cfg["d_emb"]
        self.E = 7
        self.w = {k: to_torch(*v) for k, v in tensors.items()}
        F_ = cfg["n_vars"]
        self.gru = torch.nn.GRU(3 * F_, self.d, batch_first=True).double()
        with torch.no_grad():
            for pn in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.gru, pn + "_l0").copy_(self.w["ehr.gru." + pn])

    def forward(self, static, tsv, tsm, tsd, bags, bag_off, img, avail):
        w, d, B, dt = self.w, self.d, static.shape[0], static.dtype
        av = avail.bool()
        encs = []
        idx = av[:, 0].nonzero().flatten()
        out, _ = self.gru(torch.cat([tsv, tsm, tsd], dim=2)[idx])
        s1 = F.relu(F.linear(static[idx], w["ehr.static.weight"], w["ehr.static.bias"]))
        encs.append((idx, F.relu(F.linear(torch.cat([s1, out[:, -1]], 1), w["ehr.fuse.weight"],
                                          w["ehr.fuse.bias"]))))
        idx = av[:, 1].nonzero().flatten()
        ids, off = [], []
        for i in idx.tolist():
            off.append(len(ids))
            ids.extend(bags[bag_off[i]:bag_off[i + 1]])
        bag = F.embedding_bag(torch.tensor(ids, dtype=torch.long), w["notes.embed.weight"],
                              torch.tensor(off, dtype=torch.long), mode="mean")
        encs.append((idx, F.relu(F.linear(bag, w["notes.proj.weight"], w["notes.proj.bias"]))))
        idx = av[:, 2].nonzero().flatten()
        h = img[idx].to(dt).unsqueeze(1) / 255.0
        for l in range(3):
            wl = w["img.conv%d.weight" % (l + 1)].permute(0, 3, 1, 2)  # C layout (OC,3,3,C)
            h = F.relu(F.conv2d(h, wl, w["img.conv%d.bias" % (l + 1)], padding=1))
            if l < 2:
                h = F.max_pool2d(h, 2)
        encs.append((idx, F.relu(F.linear(h.mean(dim=(2, 3)), w["img.proj.weight"],
                                          w["img.proj.bias"]))))
        embs = []
        for k, (idx, e) in enumerate(encs):
            full = w[("missing.ehr", "missing.notes", "missing.img")[k]].unsqueeze(0).expand(B, d)
            scat = torch.zeros(B, d, dtype=dt).index_copy(0, idx, e)
            embs.append(torch.where(av[:, k:k + 1], scat, full))
        z = torch.cat(embs + [avail.to(dt)], 1)
        outs = [F.linear(F.relu(F.linear(z, w["expert_%d.fc1.weight" % k],
                                         w["expert_%d.fc1.bias" % k])),
                         w["expert_%d.fc2.weight" % k], w["expert_%d.fc2.bias" % k])
                for k in range(self.E)]
        gl = F.linear(F.relu(F.linear(z, w["gate.fc1.weight"], w["gate.fc1.bias"])),
                      w["gate.fc2.weight"], w["gate.fc2.bias"])
        gate = torch.softmax(gl / self.cfg["temperature"], dim=1)
        comb = sum(gate[:, k:k + 1] * outs[k] for k in range(self.E))
        return torch.sigmoid(F.linear(comb, w["heads.weight"], w["heads.bias"])), gate


def load_inputs(ds_dir, mean, std, cfg):
    """The dataset normalised as train/trainer.c gathers it."""
    ld = lambda n: np.load(os.path.join(ds_dir, n + ".npy"))
    Fs, T = cfg["n_static"], cfg["n_steps"]
    st, tv = ld("static").astype(np.float64), ld("ts_value").astype(np.float64)
    st = np.where(np.isfinite(st), (st - mean[:Fs]) / std[:Fs], 0.0)
    tv = np.where(np.isfinite(tv), (tv - mean[Fs:]) / std[Fs:], 0.0)
    tsm = ld("ts_mask").astype(np.float64)
    tsd = ld("ts_delta").astype(np.float32) * np.float32(1.0 / T)
    H = cfg["note_buckets"]
    toks = (ld("note_tokens").astype(np.int64) % H).tolist()
    offs = ld("note_offsets").astype(np.int64).tolist()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return dict(static=t(st.astype(np.float32).astype(np.float64)),
                tsv=t(tv.astype(np.float32).astype(np.float64)), tsm=t(tsm),
                tsd=t(tsd.astype(np.float64)), bags=toks, bag_off=offs,
                img=t(ld("images")), avail=t(ld("avail"))), ld("ids")[:, 1]


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit("FAIL: %s exited %d:\n%s" % (" ".join(cmd), r.returncode, r.stdout))
    return r.stdout


def make_cohort(moeh, tmp, admissions):
    raw, ds = os.path.join(tmp, "raw"), os.path.join(tmp, "cohort")
    run([moeh, "synth", "--admissions", str(admissions), "--seed", "3", "--out", raw])
    run([moeh, "extract", "--mimic", raw + "/mimic", "--note", raw + "/note", "--cxr",
         raw + "/cxr", "--out", ds, "--log-level", "error"])
    return ds


def check_readme_snippet(model, tensors, meta):
    """README.md's PyTorch snippet ("Using the model"), run as printed on this model file,
    loads every tensor (name, shape, values) and the metadata as the reader above does."""
    readme = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                               "README.md"), encoding="utf-8").read()
    section = readme.split("## Using the model", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"moeh-run/model.safetensors"' in code, "README snippet: the path it loads changed"
    ns = {}
    exec(compile(code.replace('"moeh-run/model.safetensors"', repr(model)), "README.md", "exec"),
         ns)
    got, got_meta = ns["tensors"], ns["meta"]
    assert got_meta == meta, "README snippet: metadata differs"
    assert set(got) == set(tensors), "README snippet: tensor names differ"
    for name, (shape, raw) in tensors.items():
        assert tuple(got[name].shape) == shape, (name, tuple(got[name].shape), shape)
        assert torch.equal(got[name].double(), to_torch(shape, raw)), name
    assert ns["tasks"] == ["mortality", "los7", "readmit30"] and "arch" in ns["config"]
    print("README snippet: %d tensors and the metadata loaded as the reader loads them"
          % len(got))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", default=os.environ.get("MOEH_BIN_DIR", "build/bin"))
    ap.add_argument("--bench", type=int, default=0,
                    help="also time C and torch forwards on a cohort of this many admissions")
    a = ap.parse_args()
    moeh = os.path.join(a.bin_dir, "moeh")
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="moeh_test_modelfile_torch_")
    try:
        ds = make_cohort(moeh, tmp, 300)
        out = os.path.join(tmp, "train")
        run([moeh, "train", "--dataset", ds, "--epochs", "1", "--out", out])
        model = os.path.join(out, "model.safetensors")
        preds = os.path.join(tmp, "preds.csv")
        run([moeh, "predict", "--model", model, "--dataset", ds, "--out", preds])
        tensors, meta = read_safetensors(model)
        check_readme_snippet(model, tensors, meta)
        assert meta["moeh_format"] == "moeh-model/1", meta["moeh_format"]
        cfg = json.loads(meta["moeh_config"])
        assert cfg["arch"] == 0 and cfg["top_k"] == 0, "the reference covers the default model"
        shape = json.loads(meta["data_shape"])
        assert shape["n_vars"] == cfg["n_vars"] and shape["image_size"] == cfg["img_size"]
        ts = json.loads(meta["ts_features"])
        meta_ds = json.load(open(os.path.join(ds, "meta.json")))
        assert ts == [{"name": v["name"], "unit": v["unit"]} for v in meta_ds["ts_features"]]
        assert json.loads(meta["static_features"]) == meta_ds["static_features"]
        assert json.loads(meta["tasks"]) == ["mortality", "los7", "readmit30"]
        prov = json.loads(meta["provenance"])
        assert prov["source"] == "central" and prov["rounds"] == 1, prov
        mean = to_torch(*tensors.pop("norm.mean")).numpy()
        std = to_torch(*tensors.pop("norm.std")).numpy()
        assert (std > 0).all()
        net = MoEHealth(cfg, tensors)
        inputs, hadm = load_inputs(ds, mean, std, cfg)
        with torch.no_grad():
            p, g = net(**inputs)
        rows = open(preds).read().strip().split("\n")
        head = rows[0].split(",")
        assert head[:5] == ["admission_id", "combo", "p_mortality", "p_los7", "p_readmit30"]
        assert len(rows) - 1 == p.shape[0], (len(rows) - 1, p.shape)
        worst_p = worst_g = 0.0
        for i, line in enumerate(rows[1:]):
            f = line.split(",")
            assert int(f[0]) == int(hadm[i])
            cp = np.array([float(x) for x in f[2:5]])
            cg = np.array([float(x) for x in f[5:12]])
            worst_p = max(worst_p, float(np.abs(cp - p[i].numpy()).max()))
            worst_g = max(worst_g, float(np.abs(cg - g[i].numpy()).max()))
            assert int(f[12]) == int(np.argmax(cg))
        print("%d admissions: max |C - torch| probability %.2e, gate weight %.2e (tolerance %g)"
              % (p.shape[0], worst_p, worst_g, TOL))
        if worst_p > TOL or worst_g > TOL:
            sys.exit("FAIL: the C predictions differ from the PyTorch reference")
        # the reader refuses a broken file (the checks above must be able to fail)
        broken = os.path.join(tmp, "broken.safetensors")
        blob = bytearray(open(model, "rb").read())
        blob += b"\0\0\0\0"
        open(broken, "wb").write(blob)
        try:
            read_safetensors(broken)
            sys.exit("FAIL: a file with unused data was read")
        except ValueError:
            pass
        if a.bench:
            bench(moeh, model, net, cfg, mean, std, tmp, a.bench)
        print("ok")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench(moeh, model, net, cfg, mean, std, tmp, admissions):
    """Rows/s of the C forward (moeh predict's own timing) and of the torch reference (float32,
    one thread, batches of 64), on the same cohort in the same run."""
    ds = make_cohort(moeh, os.path.join(tmp, "bench"), admissions)
    out = run([moeh, "predict", "--model", model, "--dataset", ds, "--out",
               os.path.join(tmp, "bench.csv"), "--no-verify"])
    c_rate = float(out.split("rows/s forward")[0].rsplit("(", 1)[1].split()[-1])
    inputs, _ = load_inputs(ds, mean, std, cfg)
    n = inputs["static"].shape[0]
    net = net.float()
    net.w = {k: v.float() for k, v in net.w.items()}
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, 64):
            sl = slice(s, min(n, s + 64))
            bo = inputs["bag_off"][s:min(n, s + 64) + 1]
            net(inputs["static"][sl].float(), inputs["tsv"][sl].float(),
                inputs["tsm"][sl].float(), inputs["tsd"][sl].float(), inputs["bags"],
                bo, inputs["img"][sl], inputs["avail"][sl])
    t_rate = n / (time.perf_counter() - t0)
    print("bench: %d admissions; C forward %.0f rows/s, torch %s reference %.0f rows/s "
          "(1 thread, batch 64): ratio %.1fx" % (n, c_rate, torch.__version__, t_rate,
                                                 c_rate / t_rate))


if __name__ == "__main__":
    main()
