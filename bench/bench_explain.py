"""Are explanations faithful? Deletion and word-drop ratios, and the pointing game.

    python bench/bench_explain.py --part faithfulness --run RUN --data DIR [--n 200] [--methods gradcam,gradcam++]
    python bench/bench_explain.py --part pointing --run demo/run --data demo/data [--n-images 600 --seed 0 --size 128]

faithfulness: for ``--n`` test pairs (an image and its first caption), the mean similarity
fall when the hottest 20 % of a 14 x 14 grid of cells is blurred, against 20 % random cells,
and when the top word is removed, against a random word; each ratio is fall(top) / fall(random).

pointing: on shapes data made by ``crossalign synth`` (the generator knows every box),
the share of test images whose hottest pixel is inside a shape, beside the share of the image
the shapes cover (the chance of a hit). The query is the image's first caption.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _pairs(run: str, data: str, n: int, seed: int, split: str = "test") -> tuple[object, list[tuple[str, str, str]]]:
    from crossalign.runs import open_run, select_split

    rd = open_run(run, data, quiet=True)
    test = select_split(rd.table, split)
    first = {}
    for image_id, path, caption in zip(test.image_id, test.image_path, test.caption):
        first.setdefault(image_id, (image_id, path, caption))
    items = sorted(first.values())
    random.Random(seed).shuffle(items)
    return rd, items[:n] if n else items


def _batches(items, size):
    for s in range(0, len(items), size):
        yield items[s:s + size]


def _heat_and_pixels(model, batch, method):
    from crossalign.data.transforms import eval_transform, load_image
    from crossalign.embed.collection import embed_texts
    from crossalign.explain.image import image_heat

    transform = eval_transform(model.image_tower.data_config)
    pixels = torch.stack([transform(load_image(p)) for _, p, _ in batch])  # [batch, 3, H, W]
    tvec = torch.from_numpy(embed_texts(model, [c for _, _, c in batch]))  # [batch, dim]
    return pixels, tvec, image_heat(model, pixels, tvec, method)


def faithfulness(args) -> None:
    from crossalign.embed.collection import embed_images
    from crossalign.explain.words import word_scores
    from crossalign.explain.checks import deletion_drops, word_drops

    rd, items = _pairs(args.run, args.data, args.n, args.seed, args.split)
    model = rd.model
    print(f"{len(items)} {args.split} pairs of {args.data} ({model.image_tower.name} + {model.text_tower.name})")
    for method in args.methods.split(","):
        t0, rng, hot, rand = time.perf_counter(), np.random.default_rng(args.seed), [], []
        for batch in _batches(items, args.batch):
            pixels, tvec, heat = _heat_and_pixels(model, batch, method)
            d = deletion_drops(model, pixels, heat, tvec, rng, frac=args.frac, cells=args.cells)
            hot.extend(d["hot"]), rand.extend(d["random"])
        h, r = float(np.mean(hot)), float(np.mean(rand))
        print(f"image deletion ({method}, {args.frac:.0%} of {args.cells}x{args.cells} cells blurred): "
              f"similarity fall hot {h:.4f}, random {r:.4f}, ratio {h / r:.2f}  "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    t0, rng, tops, rands, deltas = time.perf_counter(), random.Random(args.seed), [], [], []
    for _, path, caption in items:
        ivec = torch.from_numpy(embed_images(model, [path]))[0]
        ws = word_scores(model, caption, ivec, args.steps)
        deltas.append(abs(ws.delta))
        drops = word_drops(model, caption, ws.words, ws.scores, ivec, rng)
        if drops is not None:
            tops.append(drops[0]), rands.append(drops[1])
    t, r = float(np.mean(tops)), float(np.mean(rands))
    print(f"word drop ({len(tops)} captions, integrated gradients, {args.steps} steps): similarity fall "
          f"top word {t:.4f}, random word {r:.4f}, ratio {t / r:.2f}; mean |completeness delta| "
          f"{np.mean(deltas):.2e}  [{time.perf_counter() - t0:.0f} s]")


def pointing(args) -> None:
    from crossalign.data.synthetic import scene_objects
    from crossalign.data.transforms import inspect_image
    from crossalign.explain.image import heat_in_frame
    from crossalign.explain.checks import pointing_hit

    rd, items = _pairs(args.run, args.data, 0, args.seed, args.split)
    objects = scene_objects(args.n_images, args.seed, args.size)
    missing = [i for i, _, _ in items if Path(i).name not in objects]
    if missing or inspect_image(items[0][1])[:2] != (args.size, args.size):
        sys.exit(f"{args.data} was not made by 'crossalign synth --n {args.n_images} --seed {args.seed}' "
                 f"at {args.size} px")
    model = rd.model
    print(f"{len(items)} {args.split} images of {args.data}; hottest pixel inside a shape's box "
          f"(tolerance {args.tolerance:g} px)")
    for method in args.methods.split(","):
        hits, shares = [], []
        for batch in _batches(items, args.batch):
            _, _, heat = _heat_and_pixels(model, batch, method)
            for (image_id, _, _), h in zip(batch, heat):
                frame = heat_in_frame(h, args.size, args.size, model.image_tower.data_config)
                hit, share = pointing_hit(frame, objects[Path(image_id).name], args.tolerance)
                hits.append(hit), shares.append(share)
        acc, share = float(np.mean(hits)), float(np.mean(shares))
        print(f"pointing game ({method}): accuracy {acc:.3f}, area share {share:.3f}, ratio {acc / share:.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["faithfulness", "pointing"], required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--methods", default="gradcam,gradcam++,layercam")
    p.add_argument("--n", type=int, default=200, help="test pairs (faithfulness)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", help="test (default), or all for every image")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frac", type=float, default=0.2)
    p.add_argument("--cells", type=int, default=14)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--n-images", type=int, default=600, help="pointing: the synth data's --n")
    p.add_argument("--size", type=int, default=128, help="pointing: the synth data's image side")
    p.add_argument("--tolerance", type=float, default=0.0)
    args = p.parse_args(argv)
    torch.set_grad_enabled(True)
    (faithfulness if args.part == "faithfulness" else pointing)(args)


if __name__ == "__main__":
    main()
