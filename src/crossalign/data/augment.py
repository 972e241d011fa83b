"""Training-time augmentation of images and captions, deterministic under an explicit seed.

Every call takes a ``seed`` and draws only from a local ``random.Random``: the same seed gives the
same output on any machine and in any process, and the global RNGs are never touched, so a resumed
or multi-worker run sees exactly the views a straight run would. Derive the seed from the run seed,
the epoch, the sample and the view with :func:`~crossalign.data.splits.stable_seed`.

Each operation draws from its own stream (``stable_seed(seed, op)``), so switching one operation
on or off, or changing its probability, leaves the draws of the others unchanged.

Images: :func:`augment_image` returns a PIL image that the tower's own deterministic preprocessing
(:func:`crossalign.data.transforms.eval_transform`) then resizes, centre-crops and normalises. The
random *resized* crop is therefore split in two: here a random region (area ``crop_scale``, aspect
``crop_ratio``) is cut out at full resolution, and the tower's resize scales it to its input size,
so pixels are resampled once, not twice. Pass ``short_side`` (the tower's resize size) to shrink
big crops before the colour operations, which keeps them cheap on large photos.

Captions: :func:`augment_text` replaces content words by WordNet synonyms and drops words; see
:mod:`crossalign.data._wordnet` for where WordNet comes from.
"""

from __future__ import annotations

import math
import random
import re
from functools import lru_cache

from PIL import Image

from crossalign.config import AugmentConfig
from crossalign.data._wordnet import WordNet, find_wordnet_dir
from crossalign.data.splits import stable_seed
from crossalign.errors import WordNetMissing

__all__ = [
    "augment_image",
    "augment_text",
    "check_augment",
    "describe",
    "load_wordnet",
]

# Per-operation stream ids for stable_seed(seed, op): fixed forever, or old seeds change meaning.
_CROP, _FLIP, _JITTER, _GRAY, _TEXT = 1, 2, 3, 4, 5
# Synonyms come from the first (most common) sense only: on Flickr8k captions the second sense
# already brings "dog" -> "frump" and "man" -> "military personnel", which mislabel the image.
_MAX_SYNSETS = 1
_MIN_WORD_LEN = 3
_WORD = re.compile(r"^(\W*)([A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z])(\W*)$")  # leading punct, word, trailing punct
_STOP_WORDS = frozenset(
    """a an the and or but nor so yet for of in on at to from by with without into onto over under
    above below between among through during before after up down out off near far about against
    along around behind beside beyond inside outside upon within across toward towards is are was
    were be been being am has have had having do does did doing will would shall should can could
    may might must this that these those there here it its he she they them his her their hers
    him we us our you your i me my who whom whose which what where when why how all any both each
    few more most other some such no not only own same than too very just while as if then one two
    three four five six seven eight nine ten another someone something""".split()
)


def _rng(seed: int, op: int) -> random.Random:
    return random.Random(stable_seed(seed, op))


# ---------------------------------------------------------------------------------------- images


def _crop_box(width: int, height: int, cfg: AugmentConfig, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random region, as torchvision's RandomResizedCrop picks it."""
    area = width * height
    log_ratio = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    # fallback: the largest centred region whose aspect ratio is within range
    in_ratio = width / height
    w, h = width, height
    if in_ratio < min(cfg.crop_ratio):
        h = int(round(w / min(cfg.crop_ratio)))
    elif in_ratio > max(cfg.crop_ratio):
        w = int(round(h * max(cfg.crop_ratio)))
    return (height - h) // 2, (width - w) // 2, h, w


def _jitter(img: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    """Brightness, contrast, saturation and hue in a random order, as torchvision's ColorJitter."""
    from torchvision.transforms.v2 import functional as F
    factors = [rng.uniform(max(0.0, 1 - s), 1 + s) for s in (cfg.brightness, cfg.contrast, cfg.saturation)]
    hue = rng.uniform(-cfg.hue, cfg.hue)
    ops = [
        lambda im: F.adjust_brightness(im, factors[0]),
        lambda im: F.adjust_contrast(im, factors[1]),
        lambda im: F.adjust_saturation(im, factors[2]),
        lambda im: F.adjust_hue(im, hue),
    ]
    rng.shuffle(ops)
    for op in ops:
        img = op(img)
    return img


def augment_image(img: Image.Image, cfg: AugmentConfig, seed: int, short_side: int | None = None) -> Image.Image:
    """One augmented view of an RGB image: random crop, flip, colour jitter, grayscale.

    Applies whatever ``cfg`` enables regardless of ``cfg.image`` (that switch is the caller's).
    The result is an RGB PIL image of any size; give it to the tower's ``eval_transform``.

    Args:
        img: RGB image (``crossalign.data.transforms.load_image`` gives one).
        cfg: probabilities and strengths.
        seed: from :func:`~crossalign.data.splits.stable_seed`; the same seed gives the same pixels.
        short_side: if given, a crop whose shorter side is longer is shrunk to it (bicubic) before
            the colour operations; pass the tower's resize size to keep large photos cheap.
    """
    # torchvision is imported here, not at the top: caption-only users and the seed helper
    # stay light enough to import in every data-loader worker without a second of start-up
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    img = img.convert("RGB") if img.mode != "RGB" else img
    rng = _rng(seed, _CROP)
    if rng.random() < cfg.crop_prob:
        top, left, h, w = _crop_box(img.width, img.height, cfg, rng)
        img = F.crop(img, top, left, h, w)
    if short_side and min(img.size) > short_side:
        img = F.resize(img, short_side, interpolation=InterpolationMode.BICUBIC)
    if _rng(seed, _FLIP).random() < cfg.flip_prob:
        img = F.horizontal_flip(img)
    rng = _rng(seed, _JITTER)
    if rng.random() < cfg.jitter_prob:
        img = _jitter(img, cfg, rng)
    if _rng(seed, _GRAY).random() < cfg.grayscale_prob:
        img = F.rgb_to_grayscale(img, num_output_channels=3)
    return img


# ------------------------------------------------------------------------------------------ text


@lru_cache(maxsize=4)
def load_wordnet(wordnet_dir: str = "") -> WordNet:
    """The WordNet reader for a folder (resolved by :func:`find_wordnet_dir`), loaded once per process.

    Raises:
        WordNetMissing: no WordNet database was found; the message says how to install it.
    """
    return WordNet(find_wordnet_dir(wordnet_dir))


def _match_case(word: str, like: str) -> str:
    """Give ``word`` the capitalisation style of ``like`` (lower, Capitalised or UPPER)."""
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


_IRREGULAR = {"man": "men", "woman": "women", "child": "children", "person": "people", "foot": "feet", "tooth": "teeth"}


def _plural(noun: str) -> str:
    """English plural of a (possibly multi-word) noun: "box" -> "boxes", "young woman" -> "young women"."""
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR:
        return f"{head} {_IRREGULAR[last]}".lstrip()
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if len(noun) > 1 and noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _singular(word: str, wordnet: WordNet) -> str | None:
    """The noun or verb whose regular -s form ``word`` is ("dogs", "boxes", "puppies", "climbs"), or None."""
    if not word.endswith("s"):
        return None
    for base in (word[:-3] + "y" if word.endswith("ies") else "", word[:-2], word[:-1]):
        if base and _plural(base) == word and wordnet.main_pos(base) in ("noun", "verb"):
            return base
    return None


def _is_verb_form(word: str, wordnet: WordNet) -> bool:
    """Whether an -ing / -ed word is mostly a verb form ("running", "jumped") rather than its own lemma."""
    if not word.endswith(("ing", "ed")):
        return False
    stem = word[:-3] if word.endswith("ing") else word[:-2]
    bases = (stem, stem + "e", stem[:-1] if len(stem) > 2 and stem[-1] == stem[-2] else "")
    own = max(wordnet.tag_counts(word).values(), default=0)
    return any(b and wordnet.has(b, ("verb",)) and wordnet.tag_counts(b).get("verb", 0) >= own for b in bases)


def _synonym(word: str, wordnet: WordNet, rng: random.Random) -> str | None:
    """A WordNet synonym of a content word in the same inflection, or None when there is none.

    Synonyms come from the part of speech the word is most often used in (WordNet's tag counts),
    since a caption gives no tagger to ask. Base forms and regular -s forms are replaced (the
    synonym gets the same ending); other inflected forms ("running", "ran", "children") are left
    alone rather than replaced by a word in the wrong form.
    """
    low = word.lower()
    if len(low) < _MIN_WORD_LEN or low in _STOP_WORDS or _is_verb_form(low, wordnet):
        return None
    pos = wordnet.main_pos(low)
    if pos:
        names = list(wordnet.synonyms(low, _MAX_SYNSETS, (pos,)))
    else:
        base = _singular(low, wordnet)
        pos = wordnet.main_pos(base) if base else None
        # a multi-word verb takes the ending on its first word ("go up" -> "goes up"); skip those
        names = [_plural(n) for n in wordnet.synonyms(base, _MAX_SYNSETS, (pos,)) if pos == "noun" or " " not in n] if base else []
    # proper names and capitalised terms ("Canis familiaris") do not fit an ordinary caption
    names = [n for n in names if n.islower()]
    return _match_case(rng.choice(names), word) if names else None


def _drop_words(tokens: list[str], p: float, rng: random.Random) -> list[str]:
    """Drop each word with probability ``p``; punctuation stays; at least one word always stays."""
    is_word = [bool(re.search(r"[A-Za-z0-9]", t)) for t in tokens]
    keep = [not w or rng.random() >= p for w in is_word]
    if any(is_word) and not any(k and w for k, w in zip(keep, is_word)):
        keep[rng.choice([i for i, w in enumerate(is_word) if w])] = True
    return [t for t, k in zip(tokens, keep) if k]


def augment_text(text: str, cfg: AugmentConfig, seed: int, wordnet: WordNet | None = None) -> str:
    """One augmented version of a caption: synonym replacement, then word dropout.

    With probability ``1 - cfg.text_prob`` the caption comes back unchanged. Otherwise each content
    word (not a stop word, at least 3 letters) is replaced by a WordNet synonym with probability
    ``cfg.synonym_prob`` (keeping its capitalisation and a regular plural ending), and each word is
    dropped with probability ``cfg.word_dropout``, never all of them. Whitespace is normalised to
    single spaces. Applies whatever ``cfg`` enables regardless of ``cfg.text`` (the caller's switch).

    Args:
        text: the caption.
        cfg: probabilities.
        seed: from :func:`~crossalign.data.splits.stable_seed`; the same seed gives the same caption.
        wordnet: a reader; default :func:`load_wordnet` of ``cfg.wordnet_dir`` (only loaded when
            ``cfg.synonym_prob > 0``).

    Raises:
        WordNetMissing: synonyms are on and no WordNet database was found.
    """
    rng = _rng(seed, _TEXT)
    if rng.random() >= cfg.text_prob:
        return text
    tokens = text.split()
    if cfg.synonym_prob > 0:
        wordnet = wordnet or load_wordnet(cfg.wordnet_dir)
        for i, token in enumerate(tokens):
            m = _WORD.match(token)
            if m and rng.random() < cfg.synonym_prob:
                new = _synonym(m.group(2), wordnet, rng)
                tokens[i] = m.group(1) + new + m.group(3) if new else token
    if cfg.word_dropout > 0:
        tokens = _drop_words(tokens, cfg.word_dropout, rng)
    return " ".join(tokens)


# ----------------------------------------------------------------------------------- checking


def check_augment(cfg: AugmentConfig) -> None:
    """Fail early, before any training, when ``augment.text`` needs WordNet and none is found
    (the ranges of the ``augment.*`` settings are checked with the rest, ``RunConfig.validate``).

    Raises:
        WordNetMissing: ``augment.text`` with ``synonym_prob > 0`` and no WordNet found.
    """
    if cfg.text and cfg.synonym_prob > 0:
        try:
            load_wordnet(cfg.wordnet_dir)
        except WordNetMissing as e:
            raise WordNetMissing(f"augment.text with augment.synonym_prob={cfg.synonym_prob}: {e}") from None


def describe(cfg: AugmentConfig) -> str:
    """One line for reports, e.g. ``"crop 0.6-1.0, jitter 0.4 (p 0.8), gray 0.2; synonyms 0.1, dropout 0.1"``."""
    parts = []
    if cfg.image:
        ops = []
        if cfg.crop_prob > 0:
            ops.append(f"crop {cfg.crop_scale[0]:g}-{cfg.crop_scale[1]:g}" + (f" (p {cfg.crop_prob:g})" if cfg.crop_prob < 1 else ""))
        if cfg.jitter_prob > 0 and max(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) > 0:
            strengths = {cfg.brightness, cfg.contrast, cfg.saturation}
            jit = f"{cfg.brightness:g}" if len(strengths) == 1 else f"{cfg.brightness:g}/{cfg.contrast:g}/{cfg.saturation:g}"
            ops.append(f"jitter {jit} hue {cfg.hue:g} (p {cfg.jitter_prob:g})")
        if cfg.grayscale_prob > 0:
            ops.append(f"gray {cfg.grayscale_prob:g}")
        if cfg.flip_prob > 0:
            ops.append(f"flip {cfg.flip_prob:g}")
        parts.append(", ".join(ops) or "image: none")
    if cfg.text:
        ops = [f"synonyms {cfg.synonym_prob:g}"] if cfg.synonym_prob > 0 else []
        if cfg.word_dropout > 0:
            ops.append(f"dropout {cfg.word_dropout:g}")
        parts.append(", ".join(ops) + f" (p {cfg.text_prob:g})" if ops else "text: none")
    return "; ".join(parts) or "none"
