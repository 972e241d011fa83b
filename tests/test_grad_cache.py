"""Gradient caching (``train.grad_cache``, Gao et al. 2021): a step whose towers run a chunk at a
time gets the gradient of the whole batch, for every kind of tower that trains (MiniLM, a CLIP
pair from transformers, an open_clip pair), for both losses, with dropout on, in one process and
in two.

With dropout on, the reference is the whole batch's loss backpropagated once, its towers run
part by part as the cached step runs them (each part's images, then its texts), so that dropout
draws the same masks; the cached step draws them twice, and only replaying each chunk's random
state makes the second draw the first (a test takes the replay away and sees the gradient move).
Without dropout the reference is the engine's plain step, the whole batch in one forward pass.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import crossalign
from crossalign.config import RunConfig, load_config
from crossalign.data.prepare import prepare_table
from crossalign.data.synthetic import make_shapes_dataset
from crossalign.distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from crossalign.errors import ConfigError
from crossalign.train import engine as engine_mod
from crossalign.train import grad_cache
from crossalign.train.sides import length_chunks, take

from _tiny_clip import make_tiny_clip, make_tiny_open_clip

# float32: the chunked passes and the whole batch add the same terms in another order (measured
# differences are about 1e-7 of a tensor's gradient)
RTOL = 1e-5
# a gradient that is zero in exact arithmetic holds only that rounding noise (attention's key
# bias: softmax ignores a constant added to every score), so each tensor's error is measured
# against at least this fraction of the whole gradient's norm
FLOOR = 1e-3
DROPOUT = 0.2  # attention dropout of the tiny CLIP pair; patch dropout of the open_clip one
WORLD = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, like each process of the two-process test: these towers are small, and two
    threads on a busy CPU spend more time waiting for each other than computing."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """72 pictures with 5 short captions each: about 290 training captions, room for 256."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_images=72, seed=1, size=32)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """24 pictures: a training epoch of one step of 2 micro-batches of 32 pairs."""
    return make_shapes_dataset(tmp_path_factory.mktemp("small"), n_images=24, seed=1, size=32)


def _clip_pair(folder: Path, dropout: float) -> list[str]:
    make_tiny_clip(folder)
    config = json.loads((folder / "config.json").read_text())
    for side in ("text_config", "vision_config"):
        config[side]["attention_dropout"] = dropout
    (folder / "config.json").write_text(json.dumps(config))
    return [f"model.pretrained_model=hf:{folder}", "model.image.freeze=trainable"]


def _open_clip_pair(folder: Path, dropout: float) -> list[str]:
    config, weights = make_tiny_open_clip(folder)
    spec = json.loads(config.read_text())
    spec["vision_cfg"]["patch_dropout"] = dropout  # a random subset of patches per image
    dropped = folder / "tiny-oc-dropout.json"
    dropped.write_text(json.dumps(spec))
    return [f"model.pretrained_model=open_clip:{dropped}", f"model.pretrained_weights={weights}",
            "model.image.freeze=trainable"]


MINILM = ["model.text.tower=minilm", "model.text.max_tokens=16", "model.image.tower=small_cnn",
          "model.image.width=16", "model.image.image_size=32", "model.image.freeze=frozen",
          "model.embed_dim=16"]  # MiniLM trains; a frozen image tower's head still trains (dropout 0.5)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, list[str]]:
    """Settings of each kind of trained model; ``clip-plain`` has no dropout anywhere."""
    mk = tmp_path_factory.mktemp
    return {"minilm": MINILM, "clip": _clip_pair(mk("clip"), DROPOUT),
            "clip-plain": _clip_pair(mk("clip-plain"), 0.0),
            "open_clip": _open_clip_pair(mk("open-clip"), DROPOUT)}


# (batch, chunk): 256 where the towers are tiny; MiniLM is a real model, so a smaller batch.
# Chunks that do not divide the batch: the last one is shorter
SIZES = {"minilm": (12, 5), "clip": (256, 96), "clip-plain": (256, 96), "open_clip": (256, 96)}


def _engine(data: Path, where: Path, sets: list[str], dist: DistInfo = DistInfo()):
    """The engine of a run of ``sets`` (its text tower trains), in training mode."""
    cfg = load_config(None, sets + ["model.text.freeze=trainable", "train.tensorboard=false",
                                    "runtime.device=cpu", f"cache.dir={where / 'cache'}"])
    table, problems = prepare_table(data, cfg.data)
    eng = engine_mod.run_engine(where / "run", cfg, table, problems, dist, progress=False)
    eng.model.train()
    return eng


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _step_grads(eng, batch, chunk: int, seed: int = 5) -> tuple[float, dict]:
    """The engine's step over ``batch``: cached in chunks of ``chunk`` rows, or plain (0)."""
    eng.cfg.train.grad_cache = chunk
    eng.opt.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = eng._micro_step(batch, epoch=1, sync=True)
    return loss, _grads(eng.model)


def _full_batch_grads(eng, batch, chunk: int, seed: int = 5) -> tuple[float, dict]:
    """The whole batch's loss backpropagated once, through towers run on the parts the cached
    step runs (captions of similar length, ``chunk`` at a time; each part's images, then its
    texts), so that dropout draws the masks the cached step draws."""
    eng.opt.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    ids = eng.t2i[batch]
    img_in, txt_in = eng.images.inputs(ids, 1, batch), eng.texts.inputs(batch, 1)
    parts = length_chunks(eng.texts.lengths(txt_in), chunk)
    img, txt = [], []
    for rows in parts:
        img.append(eng.images.encode(take(img_in, rows)))  # [rows, embed_dim]
        txt.append(eng.texts.encode(take(txt_in, rows)))
    back = torch.from_numpy(np.argsort(np.concatenate(parts)))  # the batch's own order
    bias = eng.model.logit_bias
    kwargs = {"logit_bias": bias} if bias is not None else {}
    loss = eng.loss_fn(torch.cat(img)[back], torch.cat(txt)[back], eng.model.scale(),
                       torch.as_tensor(ids), **kwargs)
    loss.backward()
    return loss.item(), _grads(eng.model)


def _relative_error(got: dict, want: dict) -> float:
    diff = torch.cat([(got[n] - g).flatten() for n, g in want.items()])
    return float(diff.norm() / torch.cat([g.flatten() for g in want.values()]).norm())


def assert_same_gradients(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    total = torch.cat([g.flatten() for g in want.values()]).norm()
    for name, g in want.items():
        err = (got[name] - g).norm()
        assert err <= RTOL * max(g.norm(), FLOOR * total), (name, float(err / g.norm()))


@pytest.mark.parametrize("loss", ["clip", "siglip"])
@pytest.mark.parametrize("kind", ["minilm", "clip", "open_clip"])
def test_a_cached_step_has_the_full_batch_gradient(kind, loss, data, pairs, tmp_path):
    eng = _engine(data, tmp_path, pairs[kind] + [f"loss.name={loss}"])
    batch_size, chunk = SIZES[kind]
    batch = eng.rows[:batch_size]
    assert eng.local_batch() >= batch_size and len(batch) == batch_size
    want_loss, want = _full_batch_grads(eng, batch, chunk)
    got_loss, got = _step_grads(eng, batch, chunk)
    assert got_loss == pytest.approx(want_loss, rel=RTOL)
    assert ("logit_bias" in got) == (loss == "siglip") and "logit_scale" in got
    assert any(n.startswith("text_tower.") for n in got)  # a tower's own weights, not just heads
    assert_same_gradients(got, want)


def test_the_random_state_replay_is_what_keeps_dropout_the_same(data, pairs, tmp_path, monkeypatch):
    eng = _engine(data, tmp_path, pairs["clip"])
    batch_size, chunk = SIZES["clip"]
    batch = eng.rows[:batch_size]
    _, want = _full_batch_grads(eng, batch, chunk)
    monkeypatch.setattr(grad_cache, "_set_rng_state", lambda state, device: None)
    _, got = _step_grads(eng, batch, chunk)
    assert _relative_error(got, want) > 1e-3  # other masks in the second pass: another gradient


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_without_dropout_a_cached_step_is_the_plain_step(loss, data, pairs, tmp_path):
    eng = _engine(data, tmp_path, pairs["clip-plain"] + [f"loss.name={loss}"])
    batch_size, chunk = SIZES["clip-plain"]
    batch = eng.rows[:batch_size]
    plain_loss, plain = _step_grads(eng, batch, 0)  # the whole batch in one forward pass
    cached_loss, cached = _step_grads(eng, batch, chunk)
    assert cached_loss == pytest.approx(plain_loss, rel=RTOL)
    assert_same_gradients(cached, plain)


def test_a_chunk_as_large_as_the_batch_is_the_plain_step(data, pairs, tmp_path, monkeypatch):
    eng = _engine(data, tmp_path, pairs["clip-plain"] + ["train.batch_size=32"])
    monkeypatch.setattr(engine_mod, "grad_cache_step", None)  # a call would fail
    _step_grads(eng, eng.rows[:32], 32)


# ---- two processes ---------------------------------------------------------------------------


def _worker(rank: int, init_file: str, data: str, sets: list, where: str, out: str) -> None:
    torch.set_num_threads(1)
    dist = init_distributed("gloo", DistInfo(rank, WORLD, rank), init_method=f"file://{init_file}")
    try:
        results = {}
        for loss in ("clip", "siglip"):
            eng = _engine(Path(data), Path(where) / f"{loss}-{rank}", sets + [f"loss.name={loss}",
                          f"train.batch_size={SIZES['clip-plain'][0] // WORLD}"], dist)
            batch = eng.rows[:SIZES["clip-plain"][0]]  # the global batch; each process takes its half
            results[loss] = {"cached": _step_grads(eng, batch, SIZES["clip-plain"][1] // WORLD),
                             "plain": _step_grads(eng, batch, 0)}
        torch.save(results, f"{out}.{rank}")
        barrier(dist)
    finally:
        cleanup_distributed()


def test_two_processes_get_the_one_process_gradient(data, pairs, tmp_path):
    """Two gloo processes, 128 rows each, chunks of 48: the gradients each holds after the step
    (averaged over processes) are those of one process on the global batch of 256."""
    args = (str(tmp_path / "init"), str(data), pairs["clip-plain"], str(tmp_path), str(tmp_path / "out"))
    mp.start_processes(_worker, args=args, nprocs=WORLD, join=True, start_method="spawn")
    ranks = [torch.load(f"{tmp_path / 'out'}.{r}") for r in range(WORLD)]
    for loss in ("clip", "siglip"):
        eng = _engine(data, tmp_path / loss, pairs["clip-plain"] + [f"loss.name={loss}"])
        want_loss, want = _step_grads(eng, eng.rows[:SIZES["clip-plain"][0]], 0)
        for r in ranks:
            assert_same_gradients(r[loss]["cached"][1], want)
            assert_same_gradients(r[loss]["plain"][1], want)  # the plain step under DDP, the control
        # each process's loss is its own rows' share; their mean is the global batch's
        assert sum(r[loss]["cached"][0] for r in ranks) / WORLD == pytest.approx(want_loss, rel=RTOL)


# ---- the setting ---------------------------------------------------------------------------------


def _epoch_losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


def test_train_with_grad_cache_runs_every_micro_batch_in_chunks(small_data, pairs, tmp_path,
                                                                monkeypatch):
    calls = []
    real = engine_mod.grad_cache_step

    def counted(encode, parts, *args, **kwargs):
        calls.append([len(p) for p in parts])
        return real(encode, parts, *args, **kwargs)

    monkeypatch.setattr(engine_mod, "grad_cache_step", counted)
    sets = pairs["clip-plain"] + ["model.text.freeze=trainable", "train.epochs=2", "train.batch_size=32",
                                  "train.accum_steps=2", "train.early_stopping=false",
                                  "train.tensorboard=false", "runtime.device=cpu",
                                  f"cache.dir={tmp_path / 'cache'}"]
    crossalign.train(small_data, tmp_path / "cached", overrides=sets, grad_cache=16, fixed=True,
                     progress=False)
    with open(tmp_path / "cached" / "metrics.csv") as f:
        steps = int(list(csv.DictReader(f))[-1]["step"])
    assert steps >= 2 and calls == [[16, 16]] * (2 * steps)  # each micro-batch of each step, in chunks
    assert "grad_cache: 16" in (tmp_path / "cached" / "config.yaml").read_text()
    crossalign.train(small_data, tmp_path / "plain", overrides=sets, fixed=True, progress=False)
    assert len(calls) == 2 * steps  # off by default
    # the same training (no dropout: only the summation order differs); the second epoch's loss
    # is measured after the first epoch's updates
    assert _epoch_losses(tmp_path / "cached") == pytest.approx(_epoch_losses(tmp_path / "plain"),
                                                               rel=1e-5)


@pytest.mark.parametrize("bad", [
    ["train.grad_cache=-1"],
    ["train.grad_cache=8", "model.image.freeze=frozen", "model.text.freeze=frozen"]])
def test_the_setting_is_checked_when_the_config_resolves(bad):
    with pytest.raises(ConfigError, match=r"train\.grad_cache"):
        load_config(None, bad)


def test_a_fractional_chunk_is_refused():
    cfg = RunConfig()
    cfg.train.grad_cache = 1.5
    with pytest.raises(ConfigError, match=r"train\.grad_cache must be a whole number"):
        cfg.validate()


SCRATCH = ["model.image.tower=small_cnn", "model.image.width=16", "model.image.image_size=32",
           "model.text.tower=lstm", "model.text.width=16", "train.grad_cache=8"]


def test_the_engine_refuses_batch_statistics_and_towers_that_do_not_train(data, tmp_path):
    def engine(sets):
        cfg = load_config(None, sets + [f"cache.dir={tmp_path / 'cache'}"])
        table, problems = prepare_table(data, cfg.data)
        return engine_mod.run_engine(tmp_path / "run", cfg, table, problems, DistInfo(), progress=False)

    with pytest.raises(ConfigError, match="batch norm would normalise each chunk"):
        engine(SCRATCH)  # small_cnn trains from scratch, with batch norm
    assert engine(SCRATCH + ["model.image.bn_stats=keep"]).cfg.train.grad_cache == 8
    # freeze=auto freezes a pretrained tower: known only once the towers are built
    with pytest.raises(ConfigError, match="both towers are frozen"):
        engine(SCRATCH + ["model.image.freeze=frozen", "model.text.tower=minilm"])
