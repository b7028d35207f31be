#!/usr/bin/python3
"""make_fixture.py - the PyTorch reference for MoE-Health (model/moe.c).

Builds the same architecture with PyTorch's own layers (nn.GRU, F.embedding_bag, F.conv2d,
F.max_pool2d, softmax/topk, binary_cross_entropy_with_logits), in float64, draws weights and a
batch, and writes config, inputs, weights, logits, gate weights, loss and the gradient of every
parameter to tests/torch_ref/moe_fixture.bin. tests/test_torch_ref.c loads it and checks the C
forward and backward against it (1e-4 relative). CI does not need torch: the fixture is
committed.

Regenerate (Debian: apt-get install python3-torch python3-numpy):
    /usr/bin/python3 tests/torch_ref/make_fixture.py tests/torch_ref/moe_fixture.bin

File format (little endian): magic b"MOEHFIX1", u32 count, then per tensor: u32 name length,
name bytes, u32 dtype (0 f32, 1 f64, 2 u8, 3 u32, 4 u64), u32 ndim, u64 dims[ndim], data.
Case c (0, 1, ...) prefixes its tensors with "c<c>.". Weights use the C layout: conv weights
are (OC,3,3,C) (NHWC), everything else as in PyTorch.
"""
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

DT = {np.float32: 0, np.float64: 1, np.uint8: 2, np.uint32: 3, np.uint64: 4}


class Writer:
    def __init__(self):
        self.items = []

    def add(self, name, arr, dtype):
        a = np.ascontiguousarray(np.asarray(arr, dtype=dtype))
        self.items.append((name, a, DT[dtype]))

    def save(self, path):
        with open(path, "wb") as f:
            f.write(b"MOEHFIX1")
            f.write(struct.pack("<I", len(self.items)))
            for name, a, code in self.items:
                nb = name.encode()
                f.write(struct.pack("<I", len(nb)) + nb)
                f.write(struct.pack("<II", code, a.ndim))
                f.write(struct.pack("<%dQ" % a.ndim, *a.shape))
                f.write(a.tobytes())


def make_case(w, prefix, gen, cfg):
    d, dh, Fs, Fv, T = cfg["d"], cfg["dh"], cfg["Fs"], cfg["F"], cfg["T"]
    H, S, ch, NT, B = cfg["H"], cfg["S"], cfg["ch"], cfg["tasks"], cfg["B"]
    E, top_k, temp = 7, cfg["top_k"], cfg["temp"]
    lam, sup, warm = cfg["lambda_lb"], cfg["gate_sup"], cfg["warmup"]
    pw = torch.tensor(cfg["pos_weight"], dtype=torch.float64)
    f64 = torch.float64

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=f64) * scale)

    # ---- inputs ----
    avail = (torch.rand(B, 3, generator=gen) < 0.65).to(torch.uint8)
    avail[0] = torch.tensor([1, 1, 1], dtype=torch.uint8)  # every combination and "none"
    avail[1] = torch.tensor([0, 0, 0], dtype=torch.uint8)
    avail[2] = torch.tensor([1, 0, 0], dtype=torch.uint8)
    avail[3] = torch.tensor([0, 1, 1], dtype=torch.uint8)
    static = rnd(B, Fs).float().double()
    tsv = rnd(B, T, Fv).float().double()
    tsm = (torch.rand(B, T, Fv, generator=gen) < 0.6).double()
    tsd = torch.rand(B, T, Fv, generator=gen, dtype=f64).float().double()
    ntok = torch.randint(0, 9, (B,), generator=gen)
    ntok[0] = 5
    off = np.zeros(B + 1, dtype=np.uint64)
    off[0] = 3  # offsets need not start at 0: ids[0..3) are never read
    off[1:] = 3 + np.cumsum(ntok.numpy())
    ids = torch.randint(0, H, (int(off[-1]),), generator=gen)
    img = torch.randint(0, 256, (B, S, S), generator=gen).to(torch.uint8)
    y = (torch.rand(B, NT, generator=gen) < 0.4).double()
    ymask = (torch.rand(B, NT, generator=gen) < 0.8).to(torch.uint8)

    # ---- weights (C names and layouts) ----
    P = {}

    def param(name, *shape, scale):
        P[name] = rnd(*shape, scale=scale).float().double().requires_grad_(True)

    param("ehr.static.weight", d, Fs, scale=0.4)
    param("ehr.static.bias", d, scale=0.2)
    param("ehr.gru.weight_ih", 3 * d, 3 * Fv, scale=0.3)
    param("ehr.gru.weight_hh", 3 * d, d, scale=0.3)
    param("ehr.gru.bias_ih", 3 * d, scale=0.2)
    param("ehr.gru.bias_hh", 3 * d, scale=0.2)
    param("ehr.fuse.weight", d, 2 * d, scale=0.3)
    param("ehr.fuse.bias", d, scale=0.2)
    param("notes.embed.weight", H, d, scale=1.0)
    param("notes.proj.weight", d, d, scale=0.3)
    param("notes.proj.bias", d, scale=0.2)
    cin = 1
    for l in range(3):
        param("img.conv%d.weight" % (l + 1), ch[l], 3, 3, cin, scale=0.5 / cin ** 0.5)
        param("img.conv%d.bias" % (l + 1), ch[l], scale=0.1)
        cin = ch[l]
    param("img.proj.weight", d, ch[2], scale=0.5)
    param("img.proj.bias", d, scale=0.2)
    for m in ("ehr", "notes", "img"):
        param("missing." + m, d, scale=0.3)
    Dz = 3 * d + 3
    for k in range(E):
        param("expert_%d.fc1.weight" % k, dh, Dz, scale=0.25)
        param("expert_%d.fc1.bias" % k, dh, scale=0.1)
        param("expert_%d.fc2.weight" % k, d, dh, scale=0.3)
        param("expert_%d.fc2.bias" % k, d, scale=0.1)
    param("gate.fc1.weight", dh, Dz, scale=0.3)
    param("gate.fc1.bias", dh, scale=0.1)
    param("gate.fc2.weight", E, dh, scale=0.5)
    param("gate.fc2.bias", E, scale=0.1)
    param("heads.weight", NT, d, scale=0.4)
    param("heads.bias", NT, scale=0.1)

    # ---- forward with PyTorch layers ----
    av = avail.bool()
    encs = []
    # EHR: static MLP + nn.GRU over [value, mask, delta]
    idx = av[:, 0].nonzero().flatten()
    gru = torch.nn.GRU(3 * Fv, d, batch_first=True).double()
    with torch.no_grad():
        for pn in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, pn + "_l0").copy_(P["ehr.gru." + pn])
    # the module's own parameters become the C-named leaves (their .grad is what we write)
    for pn in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        P["ehr.gru." + pn] = getattr(gru, pn + "_l0")
    x = torch.cat([tsv, tsm, tsd], dim=2)[idx]
    out, _ = gru(x)
    s1 = F.relu(F.linear(static[idx], P["ehr.static.weight"], P["ehr.static.bias"]))
    e0 = F.relu(F.linear(torch.cat([s1, out[:, -1]], 1), P["ehr.fuse.weight"],
                         P["ehr.fuse.bias"]))
    encs.append((idx, e0))
    # notes: embedding bag (mean) over the rows that have notes
    idx = av[:, 1].nonzero().flatten()
    bag_ids, bag_off = [], []
    for i in idx.tolist():
        bag_off.append(len(bag_ids))
        bag_ids.extend(ids[int(off[i]) - 3:int(off[i + 1]) - 3].tolist())
    bag = F.embedding_bag(torch.tensor(bag_ids, dtype=torch.long), P["notes.embed.weight"],
                          torch.tensor(bag_off, dtype=torch.long), mode="mean")
    e1 = F.relu(F.linear(bag, P["notes.proj.weight"], P["notes.proj.bias"]))
    encs.append((idx, e1))
    # image: CNN on NCHW (weights permuted from the C layout (OC,3,3,C))
    idx = av[:, 2].nonzero().flatten()
    h = img[idx].double().unsqueeze(1) / 255.0
    for l in range(3):
        wl = P["img.conv%d.weight" % (l + 1)].permute(0, 3, 1, 2)
        h = F.relu(F.conv2d(h, wl, P["img.conv%d.bias" % (l + 1)], padding=1))
        if l < 2:
            h = F.max_pool2d(h, 2)
    e2 = F.relu(F.linear(h.mean(dim=(2, 3)), P["img.proj.weight"], P["img.proj.bias"]))
    encs.append((idx, e2))
    embs = []
    for k, (idx, e) in enumerate(encs):
        name = ("missing.ehr", "missing.notes", "missing.img")[k]
        full = P[name].unsqueeze(0).expand(B, d)
        scat = torch.zeros(B, d, dtype=f64).index_copy(0, idx, e)
        embs.append(torch.where(av[:, k:k + 1], scat, full))
    z = torch.cat(embs + [avail.double()], 1)
    outs = []
    for k in range(E):
        hk = F.relu(F.linear(z, P["expert_%d.fc1.weight" % k], P["expert_%d.fc1.bias" % k]))
        outs.append(F.linear(hk, P["expert_%d.fc2.weight" % k], P["expert_%d.fc2.bias" % k]))
    gl = F.linear(F.relu(F.linear(z, P["gate.fc1.weight"], P["gate.fc1.bias"])),
                  P["gate.fc2.weight"], P["gate.fc2.bias"])
    probs = torch.softmax(gl / temp, dim=1)
    if 0 < top_k < E:
        sel = torch.zeros(B, E, dtype=f64).scatter(1, probs.topk(top_k, dim=1).indices, 1.0)
        gw = probs * sel / (probs * sel).sum(1, keepdim=True)
    else:
        sel = torch.ones(B, E, dtype=f64)
        gw = probs
    combo = (avail[:, 0].long() + 2 * avail[:, 1].long() + 4 * avail[:, 2].long()) - 1
    wmix = gw
    if warm:
        onehot = F.one_hot(combo.clamp(min=0), E).double()
        wmix = torch.where((combo >= 0).unsqueeze(1), onehot, gw)
    comb = sum(wmix[:, k:k + 1] * outs[k] for k in range(E))
    logits = F.linear(comb, P["heads.weight"], P["heads.bias"])
    # loss: masked BCE (mean over labelled rows, summed over tasks) + gate term
    bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw, reduction="none")
    mk = ymask.double()
    loss = ((bce * mk).sum(0) / mk.sum(0).clamp(min=1)).sum()
    if warm:
        ok = combo >= 0
        loss = loss + sup * (-torch.log(probs[ok, combo[ok]])).mean()
    elif lam > 0:
        f = sel.sum(0) / sel.sum()
        loss = loss + lam * E * (f * probs.mean(0)).sum()
    loss.backward()

    # ---- write ----
    cfgv = [d, dh, Fs, Fv, T, H, S, ch[0], ch[1], ch[2], NT, top_k, B, int(warm)]
    w.add(prefix + "cfg", cfgv, np.uint64)
    w.add(prefix + "cfg_f", [temp, lam, sup] + list(cfg["pos_weight"]), np.float32)
    w.add(prefix + "static", static.numpy(), np.float32)
    w.add(prefix + "ts_value", tsv.numpy(), np.float32)
    w.add(prefix + "ts_mask", tsm.numpy(), np.float32)
    w.add(prefix + "ts_delta", tsd.numpy(), np.float32)
    w.add(prefix + "note_off", off, np.uint64)
    w.add(prefix + "note_ids", np.concatenate([[7, 7, 7], ids.numpy()]), np.uint32)
    w.add(prefix + "img", img.numpy(), np.uint8)
    w.add(prefix + "avail", avail.numpy(), np.uint8)
    w.add(prefix + "y", y.numpy(), np.float32)
    w.add(prefix + "y_mask", ymask.numpy(), np.uint8)
    for name, t in P.items():
        w.add(prefix + "w." + name, t.detach().numpy(), np.float32)
        if t.grad is None:
            raise SystemExit("no gradient reached " + name)
        w.add(prefix + "g." + name, t.grad.numpy(), np.float64)
    w.add(prefix + "logits", logits.detach().numpy(), np.float64)
    w.add(prefix + "gate", wmix.detach().numpy(), np.float64)
    w.add(prefix + "loss", [loss.item()], np.float64)
    return loss.item()


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "moe_fixture.bin"
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    base = dict(d=8, dh=6, Fs=4, F=3, T=5, H=32, S=8, ch=(3, 4, 5), tasks=3, B=9,
                temp=0.9, lambda_lb=0.05, gate_sup=0.5, pos_weight=(2.0, 1.0, 0.5))
    w = Writer()
    l0 = make_case(w, "c0.", gen, dict(base, top_k=2, warmup=False))
    l1 = make_case(w, "c1.", gen, dict(base, top_k=0, warmup=True))
    w.save(path)
    print("wrote %s: %d tensors, losses %.6f %.6f" % (path, len(w.items), l0, l1))


if __name__ == "__main__":
    main()
