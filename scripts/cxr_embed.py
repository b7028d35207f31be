#!/usr/bin/env python3
"""cxr_embed.py - chest X-ray embeddings for `moeh extract --cxr-embeddings` (docs/data.md 5.1).

Computes one 1024-wide vector per image with torchvision's DenseNet-121 (the image encoder of the
MoE-Health paper): the feature extractor, ReLU, global average pool, i.e. the input of
DenseNet's classifier. Writes the format `moeh extract` reads:

  OUT.npy       (K, 1024) float32, one row per image
  OUT.ids.txt   the K ids in row order, one per line (MIMIC-CXR's dicom_id with --cxr)
  OUT.json      what made them: model, weights file and its SHA-256, input size, normalisation

Weights come from a file the site provides (--weights densenet121.pth: a torchvision state dict,
or a checkpoint holding one under "state_dict"/"model"; only the `features.` part is used, so a
CheXpert- or MIMIC-trained DenseNet-121 works as well as ImageNet's). Nothing is downloaded.
--random-init makes random weights (for tests: the vectors carry no medical meaning).

Images: --cxr DIR reads DIR/mimic-cxr-2.0.0-metadata.csv.gz and embeds the rows whose
ViewPosition is in --views (AP,PA: the views `moeh extract` uses), from
DIR/files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg (or .png); --images DIR embeds every .jpg/.jpeg/.png
in DIR, keyed by the file name without its extension. An image file that is missing or does not
decode is reported by name; the run then fails (exit 1) unless --skip-unreadable.

Run it with Debian's python3 (/usr/bin/python3: python3-torch, python3-torchvision,
python3-numpy, python3-pil). Exit status: 0 ok, 1 failure, 2 usage error.
"""
import argparse
import csv
import gzip
import hashlib
import json
import os
import re
import sys

FEATURES = 1024  # DenseNet-121's final feature maps


def fail(msg, code=1):
    print(f"cxr_embed.py: {msg}", file=sys.stderr)
    sys.exit(code)


def list_cxr(root, views):
    """(id, path) of the metadata rows with an accepted view, in file order."""
    meta = os.path.join(root, "mimic-cxr-2.0.0-metadata.csv.gz")
    if not os.path.isfile(meta):
        fail(f"{meta}: missing (--cxr is a MIMIC-CXR-JPG root)")
    out = []
    with gzip.open(meta, "rt", newline="") as f:
        rd = csv.DictReader(f)
        need = {"dicom_id", "subject_id", "study_id", "ViewPosition"}
        if not need <= set(rd.fieldnames or []):
            fail(f"{meta}:1: expected columns {sorted(need)}, got {rd.fieldnames}")
        for line, row in enumerate(rd, start=2):
            if row["ViewPosition"] not in views:
                continue
            try:
                subj, study = int(row["subject_id"]), int(row["study_id"])
            except ValueError:
                fail(f"{meta}:{line}: subject_id / study_id are not integers")
            rel = f"files/p{subj // 1000000:02d}/p{subj}/s{study}/{row['dicom_id']}"
            path = os.path.join(root, rel + ".jpg")
            if not os.path.exists(path) and os.path.exists(os.path.join(root, rel + ".png")):
                path = os.path.join(root, rel + ".png")
            out.append((row["dicom_id"], path))
    return out


def list_images(d):
    if not os.path.isdir(d):
        fail(f"{d}: not a directory")
    names = sorted(n for n in os.listdir(d) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    return [(os.path.splitext(n)[0], os.path.join(d, n)) for n in names]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_weights(torch, features, path):
    """Loads the `features.` tensors of a DenseNet-121 state dict into `features`."""
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # a pickle that is not a checkpoint, a truncated file, ...
        fail(f"{path}: cannot be read as a PyTorch checkpoint: {e}")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if hasattr(obj, "state_dict") and not isinstance(obj, dict):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        fail(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    sd = {}
    for k, v in obj.items():
        k = k[len("module."):] if k.startswith("module.") else k
        # torchvision's own release files use the old layer names "norm.1", "conv.2", ...
        k = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|num_batches_tracked"
                   r"|running_var))", lambda m: m.group(1) + m.group(2), k)
        if k.startswith("features."):
            sd[k[len("features."):]] = v
    if not sd:
        fail(f"{path}: no 'features.*' tensors: not a DenseNet-121 state dict")
    missing, unexpected = features.load_state_dict(sd, strict=False)
    if missing or unexpected:
        fail(f"{path}: does not fit DenseNet-121: missing {list(missing)[:5]}, "
             f"unexpected {list(unexpected)[:5]}")


def main():
    ap = argparse.ArgumentParser(
        description="Chest X-ray embeddings (torchvision DenseNet-121) for moeh extract "
                    "--cxr-embeddings. Writes OUT.npy (K,1024) float32, OUT.ids.txt, OUT.json.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--cxr", help="MIMIC-CXR-JPG root (metadata csv.gz + files/); ids are dicom_id")
    src.add_argument("--images", help="a directory of .jpg/.png images; ids are the file stems")
    ap.add_argument("--out", required=True, help="output OUT.npy (OUT.ids.txt, OUT.json beside)")
    w = ap.add_mutually_exclusive_group(required=True)
    w.add_argument("--weights", help="DenseNet-121 weights provided by the site (.pth)")
    w.add_argument("--random-init", action="store_true",
                   help="random weights (tests only: the vectors mean nothing)")
    ap.add_argument("--views", default="AP,PA", help="ViewPosition values embedded with --cxr")
    ap.add_argument("--size", type=int, default=224, help="input side in pixels (224)")
    ap.add_argument("--norm", choices=["imagenet", "none"], default="imagenet",
                    help="input normalisation: ImageNet mean/std on the 3 replicated channels")
    ap.add_argument("--batch", type=int, default=16, help="images per forward pass")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    ap.add_argument("--skip-unreadable", action="store_true",
                    help="leave out (and list) images that are missing or do not decode")
    a = ap.parse_args()
    if not a.out.endswith(".npy"):
        fail("--out must end in .npy", 2)
    if not 32 <= a.size <= 1024 or a.batch < 1 or a.threads < 1:
        fail("--size 32..1024, --batch >= 1 and --threads >= 1 expected", 2)
    try:
        import numpy as np
        import torch
        import torchvision
        from PIL import Image
    except ImportError as e:
        fail(f"{e}: install Debian's python3-torch, python3-torchvision, python3-numpy, "
             f"python3-pil and run with /usr/bin/python3")

    items = list_cxr(a.cxr, set(a.views.split(","))) if a.cxr else list_images(a.images)
    if not items:
        fail("no images to embed")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = torchvision.models.densenet121(weights=None)  # weights=None: never downloads
    features = model.features.eval()
    if a.weights:
        load_weights(torch, features, a.weights)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    ids, rows, bad = [], [], []
    seen = {}
    for i, (key, _) in enumerate(items):
        if key in seen:
            fail(f"id '{key}' appears twice (items {seen[key] + 1} and {i + 1})")
        seen[key] = i
    for s in range(0, len(items), a.batch):
        batch, keys = [], []
        for key, path in items[s:s + a.batch]:
            try:
                with Image.open(path) as im:
                    g = im.convert("L").resize((a.size, a.size), Image.BILINEAR)
            except (OSError, ValueError) as e:
                bad.append(f"{key} ({path}: {e})")
                continue
            batch.append(np.asarray(g, dtype=np.float32) / 255.0)
            keys.append(key)
        if not batch:
            continue
        x = torch.from_numpy(np.stack(batch)).unsqueeze(1).expand(-1, 3, -1, -1)
        if a.norm == "imagenet":
            x = (x - mean) / std
        with torch.no_grad():
            f = torch.nn.functional.relu(features(x))
            v = torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1)
        rows.append(v.numpy().astype(np.float32))
        ids += keys
    if bad:
        print(f"cxr_embed.py: {len(bad)} image(s) missing or unreadable: " + "; ".join(bad[:5]) +
              (" ..." if len(bad) > 5 else ""), file=sys.stderr)
        if not a.skip_unreadable:
            fail("no output written (--skip-unreadable leaves them out)")
    if not ids:
        fail("no image could be read")
    vec = np.concatenate(rows)
    if vec.shape != (len(ids), FEATURES) or not np.isfinite(vec).all():
        fail(f"internal: vectors of shape {vec.shape}, finite {bool(np.isfinite(vec).all())}")
    base = a.out[:-4]
    np.save(a.out, vec)
    with open(base + ".ids.txt", "w") as f:
        f.write("".join(k + "\n" for k in ids))
    desc = {
        "model": f"densenet121 (torchvision {torchvision.__version__}), features + relu + "
                 f"global average pool",
        "weights": a.weights if a.weights else f"random-init (seed {a.seed}): for tests only",
        "weights_sha256": sha256(a.weights) if a.weights else "",
        "dim": FEATURES,
        "input": f"{a.size}x{a.size} grayscale, bilinear, replicated to 3 channels, "
                 f"{'ImageNet mean/std' if a.norm == 'imagenet' else 'no'} normalisation",
        "key": "dicom_id" if a.cxr else "file stem",
        "script": "scripts/cxr_embed.py",
    }
    with open(base + ".json", "w") as f:
        json.dump(desc, f, indent=1)
    print(f"{len(ids)} images -> {a.out} ({len(ids)} x {FEATURES} float32), "
          f"{base}.ids.txt, {base}.json")


if __name__ == "__main__":
    main()
