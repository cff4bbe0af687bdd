"""The embedded synthetic tri-modal data set: a generating rule, a renderer, and its exact ceilings.

Each sample has latent factors drawn independently and uniformly:

* image: ``colour`` (red/green/blue), ``kind`` (circle/square/triangle), ``n_shapes`` (1-3 identical shapes
  in distinct cells of a 2x2 grid, jittered, on a noisy background);
* audio: ``pitch`` (low/mid/high), ``n_beeps`` (1-3), ``wave`` (steady tone or rising chirp; a nuisance
  factor that only appears in captions), variable duration, noise;
* text: a question ``qtype`` among five (six with the relational ``same``), phrased by one of several templates.

The answer (the class label) is a function of the question and of the modality it asks about:

========== ======================================= ===================
qtype      answer                                  needs
========== ======================================= ===================
colour     the shapes' colour                      text + image
shape      the shapes' kind                        text + image
pitch      the tone's pitch                        text + audio
beeps      the number of beeps                     text + audio
total      n_shapes + n_beeps (2-6)                text + image + audio
same       yes if n_shapes == n_beeps, else no     text + image + audio
========== ======================================= ===================

``same`` ("Are there as many shapes as beeps?") is relational: the answer is a comparison between a quantity
seen and a quantity heard, so no single modality, nor text with one of them, does better than always answering
"no" (2/3 of them). It is off by default (``questions`` of :class:`SyntheticGenerator`; ``data=synthetic_relational``
turns it on), which keeps the default set, its 15 classes and its ceilings as they were.

:func:`ceilings` computes, by exact enumeration of the latent distribution, the best accuracy any model can
reach when it sees only some modalities (the Bayes-optimal accuracy of guessing the most likely answer).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

COLOURS = ("red", "green", "blue")
KINDS = ("circle", "square", "triangle")
PITCHES = ("low", "mid", "high")
COUNTS = (1, 2, 3)
WAVES = ("tone", "chirp")
QTYPES = ("colour", "shape", "pitch", "beeps", "total")
#: Question types that compare two modalities (off by default).
RELATIONAL_QTYPES = ("same",)
ALL_QTYPES = (*QTYPES, *RELATIONAL_QTYPES)

#: Class names, in label-index order (the default questions).
CLASSES: tuple[str, ...] = (*COLOURS, *KINDS, *PITCHES, *(str(c) for c in range(1, 7)))


def classes_for(questions: Iterable[str] = QTYPES) -> tuple[str, ...]:
    """The class names of a question set: :data:`CLASSES`, then ``yes``/``no`` when ``same`` is asked."""
    questions = tuple(questions)
    unknown = sorted(set(questions) - set(ALL_QTYPES))
    if unknown or not questions:
        raise ValueError(f"questions={list(questions)}: expected a non-empty subset of {list(ALL_QTYPES)}")
    return (*CLASSES, "yes", "no") if "same" in questions else CLASSES

TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": (
        "What colour is the shape?",
        "Which colour are the objects in the picture?",
        "Name the colour of the shapes you see.",
        "what color are they?",
        "Tell me the colour of the drawing.",
    ),
    "shape": (
        "What shape is drawn?",
        "Which kind of shape is in the picture?",
        "Are the objects circles, squares or triangles?",
        "what is the form of the figures?",
        "Name the shape in the image.",
    ),
    "pitch": (
        "Is the sound low, mid or high?",
        "How high is the tone?",
        "What is the pitch of the beeps?",
        "is the recording high-pitched or low-pitched?",
        "Describe the pitch you hear.",
    ),
    "beeps": (
        "How many beeps do you hear?",
        "Count the beeps in the recording.",
        "how many sounds are there?",
        "What is the number of beeps?",
        "How often does it beep?",
    ),
    "total": (
        "How many shapes and beeps are there in total?",
        "What is the number of shapes plus the number of beeps?",
        "count the shapes and the beeps together.",
        "Add the shapes you see to the beeps you hear.",
        "Shapes plus beeps makes how many?",
    ),
    "same": (
        "Are there as many shapes as beeps?",
        "Is the number of shapes equal to the number of beeps?",
        "do the shapes and the beeps match in number?",
        "Same count of shapes and beeps?",
        "Does each shape get exactly one beep?",
    ),
}

_RGB = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 0.95)}
_HZ = {"low": 400.0, "mid": 1000.0, "high": 2200.0}

#: Which latent factors each modality reveals.
MODALITY_FACTORS: dict[str, tuple[str, ...]] = {
    "image": ("colour", "kind", "n_shapes"),
    "audio": ("pitch", "n_beeps", "wave"),
    "text": ("qtype",),
}

_FACTOR_VALUES: dict[str, tuple] = {
    "colour": COLOURS,
    "kind": KINDS,
    "n_shapes": COUNTS,
    "pitch": PITCHES,
    "n_beeps": COUNTS,
    "wave": WAVES,
    "qtype": QTYPES,
}


def answer(latents: dict) -> str:
    """The generating rule: the answer to the sample's question given all its latent factors."""
    q = latents["qtype"]
    if q == "colour":
        return latents["colour"]
    if q == "shape":
        return latents["kind"]
    if q == "pitch":
        return latents["pitch"]
    if q == "beeps":
        return str(latents["n_beeps"])
    if q == "total":
        return str(latents["n_shapes"] + latents["n_beeps"])
    if q == "same":
        return "yes" if latents["n_shapes"] == latents["n_beeps"] else "no"
    raise ValueError(f"unknown question type {q!r}")


def caption(latents: dict) -> str:
    """A short description of the image and audio content, e.g. ``"2 red circles; 3 high chirps"``."""
    n, b = latents["n_shapes"], latents["n_beeps"]
    shape = latents["kind"] + ("s" if n > 1 else "")
    sound = ("beep" if latents["wave"] == "tone" else "chirp") + ("s" if b > 1 else "")
    return f"{n} {latents['colour']} {shape}; {b} {latents['pitch']} {sound}"


def ceilings(modality_sets: Iterable[Iterable[str]] | None = None,
             questions: Iterable[str] = QTYPES) -> dict[str, float]:
    """Exact best achievable accuracy for models that see only the given modalities.

    Enumerates every combination of latent factors (all uniform and independent), groups them by what the
    visible modalities reveal, and sums the probability of the most likely answer in each group.

    Args:
        modality_sets: sets of visible modalities; default: every non-empty subset of image/audio/text.
        questions: the question types asked (uniformly); default: the five of the default set.
    Returns:
        ``"audio+text" -> accuracy`` (names sorted and joined by ``+``; ``"none"`` for the empty set).
    """
    if modality_sets is None:
        mods = sorted(MODALITY_FACTORS)
        modality_sets = [c for r in range(0, 4) for c in itertools.combinations(mods, r)]
    classes_for(questions)  # checks the names
    values = {**_FACTOR_VALUES, "qtype": tuple(questions)}
    names = list(values)
    combos = list(itertools.product(*(values[n] for n in names)))
    p = 1.0 / len(combos)
    out: dict[str, float] = {}
    for visible in modality_sets:
        visible = sorted(visible)
        factors = [f for m in visible for f in MODALITY_FACTORS[m]]
        groups: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for combo in combos:
            lat = dict(zip(names, combo))
            groups[tuple(lat[f] for f in factors)][answer(lat)] += p
        out["+".join(visible) or "none"] = sum(max(g.values()) for g in groups.values())
    return out


@dataclass
class SyntheticSample:
    """One generated sample: image (3, H, W) float32 in [0, 1], mono audio (S,) float32 in [-1, 1]."""

    id: str
    text: str
    image: np.ndarray
    audio: np.ndarray
    label: int
    caption: str
    latents: dict


class SyntheticGenerator:
    """Draws latents and renders them. Deterministic for a given seed.

    Args:
        image_size: side of the square canvas in pixels (divisible by 2).
        sample_rate: audio sample rate in Hz.
        min_seconds: shortest clip.
        max_seconds: longest clip (must fit three beeps: at least 0.5 s).
        image_noise: std of Gaussian pixel noise.
        audio_noise: std of Gaussian sample noise.
        questions: the question types asked, drawn uniformly (default :data:`QTYPES`; add ``same`` for the
            relational question, which adds the classes ``yes`` and ``no``).
    """

    BEEP_S = 0.1
    GAP_S = 0.08

    def __init__(
        self,
        image_size: int = 32,
        sample_rate: int = 8000,
        min_seconds: float = 0.5,
        max_seconds: float = 1.0,
        image_noise: float = 0.05,
        audio_noise: float = 0.05,
        questions: Iterable[str] = QTYPES,
    ) -> None:
        self.questions = tuple(questions)
        self.classes = classes_for(self.questions)
        if max_seconds < 3 * self.BEEP_S + 2 * self.GAP_S:
            raise ValueError(f"max_seconds={max_seconds} cannot hold three beeps")
        if image_size % 2 or image_size < 8:
            raise ValueError(f"image_size={image_size} must be even and >= 8")
        self.image_size = image_size
        self.sample_rate = sample_rate
        self.min_seconds = max(min_seconds, 3 * self.BEEP_S + 2 * self.GAP_S)
        self.max_seconds = max_seconds
        self.image_noise = image_noise
        self.audio_noise = audio_noise
        s = image_size
        self._yy, self._xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5

    def sample_latents(self, rng: np.random.Generator) -> dict:
        values = {**_FACTOR_VALUES, "qtype": self.questions}
        lat = {name: v[rng.integers(len(v))] for name, v in values.items()}
        lat["template"] = int(rng.integers(len(TEMPLATES[lat["qtype"]])))
        return lat

    def generate(self, n: int, seed: int, prefix: str = "syn") -> list[SyntheticSample]:
        """Generate ``n`` samples; the same (n, seed) always gives the same samples."""
        rng = np.random.default_rng(seed)
        out = []
        for i in range(n):
            lat = self.sample_latents(rng)
            out.append(
                SyntheticSample(
                    id=f"{prefix}-{seed}-{i}",
                    text=TEMPLATES[lat["qtype"]][lat["template"]],
                    image=self.render_image(lat, rng),
                    audio=self.render_audio(lat, rng),
                    label=self.classes.index(answer(lat)),
                    caption=caption(lat),
                    latents=lat,
                )
            )
        return out

    def render_image(self, lat: dict, rng: np.random.Generator) -> np.ndarray:
        s = self.image_size
        cell = s / 2
        img = np.full((3, s, s), 0.2, dtype=np.float32)
        rgb = np.clip(np.array(_RGB[lat["colour"]]) + rng.normal(0, 0.05, 3), 0, 1).astype(np.float32)
        for c in rng.choice(4, size=lat["n_shapes"], replace=False):
            cy = (c // 2 + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
            cx = (c % 2 + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
            r = rng.uniform(0.34, 0.44) * cell
            m = self._shape_mask(lat["kind"], cy, cx, r)
            img[:, m] = rgb[:, None]
        img += rng.normal(0, self.image_noise, img.shape).astype(np.float32)
        return np.clip(img, 0.0, 1.0)

    def _shape_mask(self, kind: str, cy: float, cx: float, r: float) -> np.ndarray:
        dy, dx = self._yy - cy, self._xx - cx
        if kind == "circle":
            return dy**2 + dx**2 <= r**2
        if kind == "square":
            return (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)
        # Upward triangle: below the two slanted edges and above the base.
        return (dy <= r * 0.8) & (dy >= -r + 2 * np.abs(dx))

    def render_audio(self, lat: dict, rng: np.random.Generator) -> np.ndarray:
        sr = self.sample_rate
        n = int(rng.uniform(self.min_seconds, self.max_seconds) * sr)
        wave = rng.normal(0, self.audio_noise, n).astype(np.float32)
        beep, gap = int(self.BEEP_S * sr), int(self.GAP_S * sr)
        pattern = lat["n_beeps"] * beep + (lat["n_beeps"] - 1) * gap
        start = int(rng.integers(0, n - pattern + 1))
        f0 = _HZ[lat["pitch"]] * rng.uniform(0.95, 1.05)
        t = np.arange(beep) / sr
        # Steady tone at f0, or a chirp rising linearly from f0 to 1.5 f0 (phase is the integral of frequency).
        f1 = f0 if lat["wave"] == "tone" else 1.5 * f0
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * self.BEEP_S))
        tone = (np.sin(phase) * np.hanning(beep) * rng.uniform(0.3, 0.8)).astype(np.float32)
        for k in range(lat["n_beeps"]):
            a = start + k * (beep + gap)
            wave[a : a + beep] += tone
        return np.clip(wave, -1.0, 1.0)
