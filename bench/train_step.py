#!/usr/bin/python3
"""train_step.py - the PyTorch side of bench/train_step.c: the default MoE-Health (same
architecture, widths and data shapes as model/moe.c with moeh_moe_defaults(8, 17), batch 64,
every modality present) written the way a PyTorch user would (nn.GRU, nn.EmbeddingBag(mean),
nn.Conv2d/MaxPool2d, nn.Linear, torch.optim.AdamW with dense gradients), float32 on the CPU.
Prints "samples_per_s <x>" (best of 3 repetitions of --steps steps after 3 warm-up steps).

    /usr/bin/python3 bench/train_step.py --batch 64 --steps 20 --threads 1|default
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class MoEHealth(nn.Module):
    def __init__(self, Fs=8, Fv=17, d=128, dh=128, H=65536, ch=(16, 32, 64), tasks=3, E=7):
        super().__init__()
        self.static = nn.Linear(Fs, d)
        self.gru = nn.GRU(3 * Fv, d, batch_first=True)
        self.fuse = nn.Linear(2 * d, d)
        self.embed = nn.EmbeddingBag(H, d, mode="mean")
        self.nproj = nn.Linear(d, d)
        self.conv = nn.ModuleList([nn.Conv2d(1, ch[0], 3, padding=1),
                                   nn.Conv2d(ch[0], ch[1], 3, padding=1),
                                   nn.Conv2d(ch[1], ch[2], 3, padding=1)])
        self.iproj = nn.Linear(ch[2], d)
        self.missing = nn.Parameter(torch.randn(3, d) * 0.02)
        Dz = 3 * d + 3
        self.e1 = nn.ModuleList([nn.Linear(Dz, dh) for _ in range(E)])
        self.e2 = nn.ModuleList([nn.Linear(dh, d) for _ in range(E)])
        self.g1 = nn.Linear(Dz, dh)
        self.g2 = nn.Linear(dh, E)
        self.heads = nn.Linear(d, tasks)
        self.E = E

    def forward(self, static, ts, ids, offsets, img, avail):
        av = avail.bool()
        s1 = F.relu(self.static(static))
        _, hT = self.gru(ts)
        e0 = F.relu(self.fuse(torch.cat([s1, hT[0]], 1)))
        e1 = F.relu(self.nproj(self.embed(ids, offsets)))
        h = img.unsqueeze(1).float() / 255.0
        for l, conv in enumerate(self.conv):
            h = F.relu(conv(h))
            if l < 2:
                h = F.max_pool2d(h, 2)
        e2 = F.relu(self.iproj(h.mean(dim=(2, 3))))
        embs = [torch.where(av[:, k:k + 1], e, self.missing[k].expand_as(e))
                for k, e in enumerate((e0, e1, e2))]
        z = torch.cat(embs + [avail.float()], 1)
        outs = torch.stack([e2_(F.relu(e1_(z))) for e1_, e2_ in zip(self.e1, self.e2)], 1)
        probs = torch.softmax(self.g2(F.relu(self.g1(z))), dim=1)
        comb = (probs.unsqueeze(2) * outs).sum(1)
        return self.heads(comb), probs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", default="default")
    a = ap.parse_args()
    if a.threads != "default":
        torch.set_num_threads(int(a.threads))
    torch.manual_seed(0)
    B, T, Fv, Fs, S, ntok = a.batch, 48, 17, 8, 64, 256
    model = MoEHealth(Fs=Fs, Fv=Fv)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    static = torch.randn(B, Fs)
    ts = torch.randn(B, T, 3 * Fv)
    ids = torch.randint(0, 65536, (B * ntok,))
    offsets = torch.arange(0, B * ntok, ntok)
    img = torch.randint(0, 256, (B, S, S), dtype=torch.uint8)
    avail = torch.ones(B, 3, dtype=torch.uint8)
    y = (torch.rand(B, 3) < 0.3).float()
    ymask = torch.ones(B, 3)

    def step():
        opt.zero_grad(set_to_none=True)
        logits, probs = model(static, ts, ids, offsets, img, avail)
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        loss = ((bce * ymask).sum(0) / ymask.sum(0)).sum()
        f = torch.ones(B, model.E).sum(0) / (B * model.E)  # dense gate: every expert selected
        loss = loss + 0.01 * model.E * (f * probs.mean(0)).sum()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(3):
        step()
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        best = min(best, (time.perf_counter() - t0) / a.steps)
    print("torch %s threads=%d: %.2f ms/step" % (torch.__version__, torch.get_num_threads(),
                                                 best * 1e3))
    print("samples_per_s %.1f" % (B / best))


if __name__ == "__main__":
    main()
