"""Cost of augmentation on Flickr8k: milliseconds per image view and per caption, on one core.

Image views use the default recipe with every operation on (crop 0.6-1.0, jitter at p=1,
grayscale at p=0.2) followed by EfficientNet-Lite0's eval preprocessing, the way the training
loop applies them; captions use synonyms and word dropout at the defaults with text_prob=1.
Prints one JSON object.

    python bench/bench_augment.py --data ../shared/data/flickr8k --images 200 --captions 2000
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from crossalign.config import AugmentConfig
from crossalign.data.augment import augment_image, augment_text, load_wordnet, sample_seed
from crossalign.data.transforms import eval_transform, load_image

LITE0 = {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.875, "mean": (0.5,) * 3, "std": (0.5,) * 3}


def _per_item_ms(fn, items: list) -> float:
    t0 = time.perf_counter()
    for i, item in enumerate(items):
        fn(item, i)
    return 1000 * (time.perf_counter() - t0) / len(items)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--captions", type=int, default=2000)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = Path(args.data)
    with open(data / "captions.txt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = sorted({r["image"] for r in rows})[: args.images]
    images = [load_image(str(data / "images" / n)) for n in names]
    captions = [r["caption"] for r in rows[: args.captions]]
    cfg = AugmentConfig(image=True, text=True, jitter_prob=1.0, text_prob=1.0)
    tf = eval_transform(LITE0)

    t0 = time.perf_counter()
    load_wordnet(cfg.wordnet_dir).synonyms("dog")
    first_lookup_ms = 1000 * (time.perf_counter() - t0)
    result = {
        "images": len(images),
        "captions": len(captions),
        "eval_transform_ms": _per_item_ms(lambda im, i: tf(im), images),
        "augment_image_ms": _per_item_ms(lambda im, i: augment_image(im, cfg, sample_seed(0, i)), images),
        "augment_image_then_eval_ms": _per_item_ms(lambda im, i: tf(augment_image(im, cfg, sample_seed(0, i), 256)), images),
        "wordnet_first_lookup_ms": first_lookup_ms,
        "augment_text_cold_ms": _per_item_ms(lambda c, i: augment_text(c, cfg, sample_seed(0, i)), captions),
        "augment_text_warm_ms": _per_item_ms(lambda c, i: augment_text(c, cfg, sample_seed(1, i)), captions),
    }
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
