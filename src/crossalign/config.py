"""Typed run configuration: one dataclass per component, YAML load/save, dotted overrides.

The resolved config is written into every run folder (``config.yaml``) so a run can be
reproduced, resumed and evaluated with exactly the settings it was trained with.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crossalign._checks import FIT_ON, validate
from crossalign.errors import ConfigError, InputNotFound

__all__ = [
    "DataConfig",
    "ImageTowerConfig",
    "TextTowerConfig",
    "ModelConfig",
    "LossConfig",
    "TrainConfig",
    "RuntimeConfig",
    "CacheConfig",
    "AugmentConfig",
    "EvaluateConfig",
    "RunConfig",
    "load_config",
    "save_config",
    "apply_overrides",
    "default_cache_dir",
    "stage_configs",
    "trained_splits",
    "logit_start",
    "FIT_ON",
]


@dataclass
class DataConfig:
    """Where the pairs come from and how they are split."""

    # the layout: auto (guessed from the files), folder, flickr8k, karpathy, coco, csv, jsonl,
    # sidecar, movielens or webdataset
    format: str = "auto"
    # train/val/test fractions of the images when the data names no split
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0  # seed of the hash that splits images when the data names no split
    group_column: str = ""  # optional: keep all rows sharing this label in one split
    strict: bool = False  # fail on the first bad row instead of skipping it
    max_pixels: int = 89_478_485  # Pillow's decompression-bomb limit
    # reader options; empty = the layout's usual name (see crossalign.data.formats)
    image_column: str = ""  # CSV/JSONL key of the image path (filepath, image)
    caption_column: str = ""  # CSV/JSONL key of the text (title, caption/captions; MovieLens: plot)
    id_column: str = ""  # MovieLens: the movie id column (movieId, id, ...)
    separator: str = ""  # CSV field separator: "," "\t" or "tab"; empty = sniffed from the header
    image_dir: str = ""  # folder of the images, relative to the data folder, when not the usual one
    # images in uncompressed tar shards: "reference" reads each member in place (shard, offset);
    # "extract" copies it out once into extract_dir (compressed shards always are)
    shard_images: str = "reference"
    extract_dir: str = ""  # where images from tar shards are unpacked; empty = <cache dir>/extracted
    min_image_side: int = 16  # data check: images with a shorter side are reported as tiny


@dataclass
class ImageTowerConfig:
    """Image tower: a registered name plus how much of it trains."""

    tower: str = "efficientnet_lite0"  # a registered image tower, timm:NAME, or A+B side by side
    pretrained: bool = True  # load the tower's pretrained weights; false = random initialisation
    freeze: str = "auto"  # frozen | trainable | last:N | auto (trainable from scratch, else frozen)
    checkpoint: str = ""  # optional local weights file (or timm folder)
    image_size: int = 0  # 0 = the tower's own default
    width: int = 256  # from-scratch towers (small_cnn): output width
    # embeddings (evaluate, report, load, index): the normalised mean of the image's and its
    # mirror's; a frozen tower caches the mirror's features once
    tta_flip: bool = False
    # while training, dropout on the tower's output features before the head (timm's drop_rate
    # before a classifier): a head over frozen features overfits within a few epochs without it
    dropout: float = 0.5
    # convolutions in NHWC layout (faster on CPUs, same results): auto | true | false;
    # auto = the tower's own choice (timm towers yes, small_cnn no)
    channels_last: str = "auto"
    # batch-norm statistics of the blocks that train: train (batch statistics, running means
    # updated) | keep (the loaded running statistics, as in evaluation; scale and shift still
    # train), so heads warm-started over frozen features see the features they were fitted to
    bn_stats: str = "train"


@dataclass
class TextTowerConfig:
    """Text tower: a registered name plus pooling, token limit and freezing."""

    tower: str = "minilm"  # a registered text tower (minilm, lstm, transformer) or hf:NAME
    pretrained: bool = True  # load the tower's pretrained weights; false = random initialisation
    freeze: str = "auto"  # frozen | trainable | last:N | auto (trainable from scratch, else frozen)
    pooling: str = "mean"  # mean | cls | pooler
    max_tokens: int = 256  # tokens read of a text; the rest is cut (or windowed: chunk_long)
    chunk_long: bool = False  # longer texts: mean over windows of max_tokens instead of truncating
    checkpoint: str = ""  # optional local folder (Hugging Face or sentence-transformers layout)
    vocab_size: int = 10000  # from-scratch towers (lstm, transformer): words kept from the training captions
    width: int = 256  # from-scratch towers: hidden and output width
    layers: int = 2  # from-scratch towers: LSTM or Transformer layers
    dropout: float = 0.1  # while training, dropout on the tower's output features before the head


@dataclass
class ModelConfig:
    """Dual encoder: both towers, their heads and the logit scale."""

    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    # both towers, projections and logit scale (and a SigLIP bias) from one pretrained checkpoint:
    # hf:FOLDER_OR_NAME (a CLIPModel or SiglipModel) or open_clip:NAME (a name or a config JSON)
    pretrained_model: str = ""
    pretrained_weights: str = ""  # open_clip models: a checkpoint file or a pretrained tag
    embed_dim: int = 256  # width of the shared space the heads project into
    head: str = "linear"  # linear | mlp | none
    head_hidden: int = 1024  # mlp head: hidden width
    head_dropout: float = 0.1  # mlp head: dropout after its hidden layer
    logit_scale_init: float = 1 / 0.07  # starting logit scale (inverse temperature), as CLIP
    logit_scale_max: float = 100.0  # ceiling of the logit scale (CLIP's 100)
    learn_logit_scale: bool = True  # false: the logit scale stays at logit_scale_init


@dataclass
class LossConfig:
    """Contrastive objective."""

    name: str = "clip"  # clip | siglip (a pretrained SigLIP model, model.pretrained_model, always trains with siglip)
    margin: float = 0.0  # clip only: subtracted from positive similarities
    gather_with_grad: bool = True  # exact global gradients across processes (see losses.py)
    local_loss: bool = True  # each process scores only its own rows: [local, global] logits
    siglip_scale_init: float = 10.0  # siglip: initial logit scale (the paper starts at 10)
    siglip_bias_init: float = -10.0  # siglip: initial logit bias


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 40  # the most epochs (early stopping may end a run sooner)
    batch_size: int = 256  # pairs per batch in each process (the loss sees the global batch)
    # a pretrained model's run: the saved best weights become the WiSE-FT ensemble
    # (1 - wise_alpha) * zero-shot + wise_alpha * fine-tuned (1 = the fine-tune alone)
    wise_alpha: float = 1.0
    lr: float = 2e-4  # learning rate of the heads (and of the towers, unless backbone_lr)
    backbone_lr: float = 0.0  # learning rate of tower parameters that train; 0 = lr
    # a run folder whose model_best starts this run (same towers and heads): the converged heads
    # over frozen features, say, before the towers' last blocks train at a lower rate
    init_from: str = ""
    weight_decay: float = 0.05  # AdamW; none on biases, norms and the temperature
    grad_clip: float = 1.0  # gradient-norm clipping; 0 = off
    early_stopping: bool = True  # stop when the monitor has not improved for patience epochs
    patience: int = 4  # early stopping: epochs without improvement of the monitor
    monitor: str = "rsum"  # validation metric to maximise
    # which epoch model_best keeps: best (by the monitor) or last (the epoch count itself was
    # chosen, as a recipe search chooses it on held-out data)
    keep: str = "best"
    # what the weights learn from: train, or train+val (the refit after a recipe search chose the
    # epoch count on held-out data: no early stopping, keep=last; val figures are then of seen data)
    fit_on: str = "train"
    seed: int = 0  # seed of initialisation, shuffling and augmentation
    scheduler: str = "cosine"  # none | cosine | plateau
    warmup_steps: int = 0  # cosine: linear warm-up over this many optimizer steps
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of lr
    plateau_factor: float = 0.5  # plateau: lr multiplier when the monitor stalls
    plateau_patience: int = 1  # plateau: epochs without improvement before lowering lr
    accum_steps: int = 1  # micro-batches per optimizer step (the loss sees one micro-batch)
    # gradient caching (Gao et al. 2021): the towers run this many pairs at a time, twice (without
    # gradients, then with the loss's cached gradient), so a large batch takes a chunk's memory and
    # gets the same gradient; 0 = off. Needs a tower that trains; each micro-batch of accum_steps
    # is cached on its own; a chunk as large as the batch is the plain step
    grad_cache: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast on CPU and CUDA)
    checkpoint_every: int = 200  # optimizer steps between mid-epoch resume points (0 = epoch ends only)
    log_every: int = 10  # optimizer steps between rows of steps.csv
    tensorboard: bool = True  # write TensorBoard event files into RUN/tensorboard


@dataclass
class RuntimeConfig:
    """Where and how fast a run computes; none of it changes what it learns or measures."""

    device: str = "auto"  # auto (cuda when there is one, else cpu) | cpu | cuda | cuda:N
    num_workers: int = 0  # processes that decode images for training (0: in the main process)
    eval_batch_size: int = 128  # items embedded at a time by evaluation, the report and the index


@dataclass
class CacheConfig:
    """On-disk cache of frozen-tower outputs."""

    enabled: bool = True  # keep frozen towers' outputs on disk; false = compute them every time
    dir: str = ""  # empty = $CROSSALIGN_CACHE_DIR or ~/.cache/crossalign
    dtype: str = "float16"  # how features are stored: float16 (half the disk and page cache) or float32


@dataclass
class AugmentConfig:
    """Training-time augmentation (see ``crossalign.data.augment``); probabilities in [0, 1]."""

    image: bool = False  # random crop, colour jitter, grayscale and flip of training images
    crop_scale: tuple[float, float] = (0.6, 1.0)  # area fraction of the random crop
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # aspect ratio range of the random crop
    crop_prob: float = 1.0  # chance that an image is cropped
    brightness: float = 0.4  # colour jitter strengths, as torchvision's ColorJitter
    contrast: float = 0.4  # colour jitter: contrast strength
    saturation: float = 0.4  # colour jitter: saturation strength
    hue: float = 0.1  # colour jitter: hue shift
    jitter_prob: float = 0.8  # chance that an image gets the colour jitter
    grayscale_prob: float = 0.2  # chance that an image is made grayscale
    flip_prob: float = 0.0  # off by default: captions often say "left" and "right"
    text: bool = False  # rewrite training captions: WordNet synonyms, word dropout
    text_prob: float = 0.5  # chance that a caption is augmented at all
    synonym_prob: float = 0.1  # per content word: replace with a WordNet synonym
    word_dropout: float = 0.1  # per word: drop it (never all words)
    wordnet_dir: str = ""  # empty = $CROSSALIGN_WORDNET_DIR or /usr/share/wordnet
    cached_views: int = 4  # frozen image tower: augmented views per image kept in the feature cache
    # frozen image tower: each sample draws the clean or the mirrored image's cached features
    # (with augment.image: one of the augmented views or the mirror); the mirror's features
    # are the ones model.image.tta_flip caches. A last:N tower draws its cached prefix likewise
    mirror: bool = False


@dataclass
class EvaluateConfig:
    """How ``evaluate`` ranks (see ``crossalign.evaluate.ranking``)."""

    # qbnorm: query-bank normalisation over training queries (it lowers "hub" items that are near
    # every query; bench/RESULTS.md has its gain); plain: cosine similarity
    ranking: str = "qbnorm"
    qb_beta: float = 20.0  # qbnorm: inverse temperature of the inverted softmax
    qb_k: int = 1  # qbnorm: activation set = gallery items in the top qb_k of some bank query
    qb_bank: int = 0  # qbnorm: training images in the bank (their captions too); 0 = all
    qb_seed: int = 0  # qbnorm: seed of the sample when qb_bank is smaller than the train split


@dataclass
class RunConfig:
    """Everything one run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    # the later stages of a staged recipe, in order: each a mapping of the settings it changes from
    # the stage before (dotted keys as --set takes them, or nested sections), trained from that
    # stage's model_best (train.init_from): the heads converge over frozen features first, then a
    # tower's last blocks train at a lower rate. Empty: one stage
    then: list = field(default_factory=list)

    def validate(self) -> "RunConfig":
        """Check every setting that needs nothing but the settings (choices, ranges, settings
        wrong together); raises a ConfigError naming the first bad one, else returns self."""
        validate(self)
        return self


def logit_start(cfg: RunConfig) -> tuple[float, float | None]:
    """The logit scale and bias (None: no bias) a run's model starts from, settled from its loss:
    the sigmoid loss (SigLIP) starts from its own scale and bias, the softmax loss from
    ``model.logit_scale_init`` with no bias. A pretrained model's checkpoint replaces the scale,
    and the bias when it learned one (see ``models.dual.wrap_towers``)."""
    if cfg.loss.name == "siglip":
        return cfg.loss.siglip_scale_init, cfg.loss.siglip_bias_init
    return cfg.model.logit_scale_init, None


def trained_splits(cfg: RunConfig) -> tuple[str, ...]:
    """The splits a run's weights learned from (``train.fit_on``): what counts as seen."""
    return FIT_ON.get(cfg.train.fit_on, ("train",))


def default_cache_dir(cfg: CacheConfig) -> Path:
    """Resolve the feature-cache folder (float32 features keep a tree of their own in it)."""
    if cfg.dir:
        base = Path(cfg.dir).expanduser()
    elif os.environ.get("CROSSALIGN_CACHE_DIR"):
        base = Path(os.environ["CROSSALIGN_CACHE_DIR"]).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crossalign"
    return cache_root(base, cfg.dtype)


CACHE_DTYPES = ("float16", "float32")


def cache_root(base: str | Path, dtype: str = "float16") -> Path:
    """The cache root for features stored as ``dtype``: float16 ones under ``base``,
    float32 ones under ``base/float32`` (a tree of their own, so a float32 request is never
    answered with rounded values)."""
    if dtype not in CACHE_DTYPES:
        raise ConfigError(f"cache.dtype must be one of {', '.join(CACHE_DTYPES)}, not {dtype!r}")
    return Path(base) / "float32" if dtype == "float32" else Path(base)


def to_dict(cfg: Any) -> dict:
    """Dataclass tree to plain dicts and lists (tuples become lists for YAML)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML or command-line value to a field's declared type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config: {where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        args = typing.get_args(tp)
        return tuple(_coerce(x, args[0], where) for x in items)
    if tp is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"config: {where} expects true/false, got {value!r}")
        return bool(value)
    if tp in (int, float):
        try:
            return tp(float(value)) if tp is int and isinstance(value, str) and "e" in value.lower() else tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config: {where} expects {tp.__name__}, got {value!r}") from None
    if tp is str:
        return "" if value is None else str(value)
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build a dataclass from a (partial) dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"config: unknown key(s) {sorted(unknown)} in {where or 'top level'}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}".lstrip("."))
    return cls(**kwargs)


def _set_dotted(data: dict, key: str, value: Any, where: str = "config") -> None:
    """Set the dotted ``key`` of the plain-dict config ``data`` to ``value``."""
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ConfigError(f"{where}: unknown section {p!r} in {key!r}")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(f"{where}: unknown key {key!r}; known here: {sorted(node)}")
    node[parts[-1]] = value


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``key.sub=value`` strings (``--set``) to a config, returning a new one."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"an override is key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set_dotted(data, key, yaml.safe_load(value) if value.strip() else "")
    return _checked_stages(from_dict(RunConfig, data)).validate()


def _flatten(changes: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """A stage's changes as dotted keys: ``{"train": {"lr": 1e-4}}`` and ``{"train.lr": 1e-4}`` alike."""
    if not isinstance(changes, dict):
        raise ConfigError(f"{where} must be a mapping of settings to change, got {changes!r}")
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, where, dotted + "."))
        else:
            flat[dotted] = value
    return flat


# what a later stage may not change: the data and its split (a stage starts from the stage before
# on the same split), the stages themselves, and where it starts from (the stage before)
_STAGE_FIXED = ("data.", "then", "train.init_from")


def stage_configs(cfg: RunConfig) -> list[RunConfig]:
    """The stages of a staged recipe (``then``), each resolved: the first is ``cfg`` without its
    ``then``; each later one is the stage before with its changes (its ``train.init_from`` is
    left for the trainer to point at the stage before's folder). One stage when ``then`` is empty.

    Raises:
        ConfigError: a stage is not a mapping, names an unknown key or a bad value, or changes
            the data (``data.*``), ``train.init_from`` or ``then``.
    """
    stages = [dataclasses.replace(cfg, then=[])]
    for i, changes in enumerate(cfg.then, start=2):
        where = f"then: stage {i}"
        data = to_dict(stages[-1])
        for key, value in _flatten(changes, where).items():
            if key == "then" or key.startswith(_STAGE_FIXED):
                raise ConfigError(f"{where}: {key} cannot change between stages (a stage trains on the "
                                  f"stage before's data and split, from its model_best)")
            _set_dotted(data, key, value, where)
        stages.append(from_dict(RunConfig, data, where))
    return stages


def _checked_stages(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``then`` as a list of mappings, every stage resolved once so that a bad key of
    the last stage fails now, not after the first stage has trained."""
    if cfg.then is None or isinstance(cfg.then, dict):
        cfg = dataclasses.replace(cfg, then=[cfg.then] if cfg.then else [])
    elif not isinstance(cfg.then, list):
        raise ConfigError(f"config: then must be a list of stages (mappings of settings), got {cfg.then!r}")
    for stage in stage_configs(cfg)[1:]:
        stage.validate()
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then a YAML file (if given), then ``--set`` overrides."""
    cfg = RunConfig()
    if path:
        if not Path(path).is_file():
            raise InputNotFound(f"{path}: config file not found")
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a valid YAML config ({' '.join(str(e).split())})") from None
        cfg = from_dict(RunConfig, data, "")
    return apply_overrides(cfg, overrides or [])


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from crossalign._io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
