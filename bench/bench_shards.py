"""Reading webdataset shards: crossalign's reader beside a plain tarfile loop and the
webdataset library, over the same shards.

    python bench/bench_shards.py --data ../shared/data/flickr8k [--images 8000] [--per-shard 1000]

Writes uncompressed shards (one ``.jpg`` and one ``.txt`` of captions per sample) into a
temporary folder, then times, twice each (the second pass is reported: the shards are in the
page cache then, so the figures compare the readers, not the disk):

- ``tarfile loop``: ``tarfile.open(shard, "r|*")``, every member's bytes read;
- ``webdataset``: ``webdataset.WebDataset(urls)`` iterated (needs ``pip install webdataset``);
- ``crossalign read``: ``read_webdataset`` (captions and labels read, images kept as
  references: their bytes are skipped in the stream);
- ``crossalign read + bytes``: the same, then every image's bytes read back by reference
  (``read_member``), which is what the first extraction of features costs on top.

Prints samples per second and each rate as a ratio of the tarfile loop's, from one run, and
whether any image file was written.
"""

from __future__ import annotations

import argparse
import csv
import io
import tarfile
import tempfile
import time
from pathlib import Path


def write_shards(data: Path, out: Path, n_images: int, per_shard: int) -> int:
    caps: dict[str, list[str]] = {}
    with open(data / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            caps.setdefault(row["image"], []).append(row["caption"])
    names = sorted(caps)[:n_images]
    for s in range(0, len(names), per_shard):
        with tarfile.open(out / f"train-{s // per_shard:04d}.tar", "w") as tf:
            for name in names[s:s + per_shard]:
                key = Path(name).stem
                for ext, payload in (("jpg", (data / "images" / name).read_bytes()),
                                     ("txt", "\n".join(caps[name]).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    return len(names)


def tar_loop(shards):
    n = 0
    for shard in shards:
        with tarfile.open(shard, mode="r|*") as tf:
            for m in tf:
                if m.isfile():
                    tf.extractfile(m).read()
                    n += m.name.endswith(".jpg")
    return n


def wds_loop(shards):
    import webdataset as wds

    return sum(1 for _ in wds.WebDataset([str(s) for s in shards], shardshuffle=False))


def crossalign_read(root, extract):
    from crossalign.config import DataConfig
    from crossalign.data.readers.shards import read_webdataset

    table = read_webdataset(root, DataConfig(extract_dir=str(extract)))
    return table


def timed(fn, *args):
    fn(*args)  # the first pass warms the page cache
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder with images/ and captions.txt (Flickr8k)")
    p.add_argument("--images", type=int, default=8000)
    p.add_argument("--per-shard", type=int, default=1000)
    args = p.parse_args(argv)
    from crossalign.data.members import read_member

    with tempfile.TemporaryDirectory() as tmp:
        root, extract = Path(tmp) / "shards", Path(tmp) / "extracted"
        root.mkdir()
        n = write_shards(Path(args.data), root, args.images, args.per_shard)
        shards = sorted(root.glob("*.tar"))
        size = sum(s.stat().st_size for s in shards) / 1e6
        print(f"{n} samples in {len(shards)} shards, {size:.0f} MB")
        rows = [("tarfile loop",) + timed(tar_loop, shards)]
        try:
            rows.append(("webdataset",) + timed(wds_loop, shards))
        except ImportError:
            print("webdataset is not installed: pip install webdataset")
        t, table = timed(crossalign_read, root, extract)
        rows.append(("crossalign read", t, len(set(table.image_id))))
        paths = list(dict.fromkeys(table.image_path))

        def read_and_bytes():
            crossalign_read(root, extract)
            return sum(len(read_member(x)) > 0 for x in paths)

        rows.append(("crossalign read + bytes",) + timed(read_and_bytes))
        base = rows[0][1]
        for name, seconds, count in rows:
            print(f"{name:<24} {count:>6} samples  {count / seconds:>9.0f} /s  ratio to tarfile loop "
                  f"{base / seconds * count / rows[0][2]:.2f}")
        print(f"image files written: {sum(1 for _ in extract.rglob('*')) if extract.exists() else 0}")


if __name__ == "__main__":
    main()
