"""Scenes of the toy data set: coloured shapes over "sky" and "grass", sampled and rendered.

Each image shows coloured shapes (circle / square / triangle in red / green / blue / yellow, small
or big) over two stuff regions, "sky" on top and "grass" below, on a plain or noisy background.
The colour and shape words of every phrase determine its mask, so a head can learn the task.
Nothing here writes files; `hg_lmm.testing.toy.formats` writes the scenes in each data format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "big")
# Stuff colours are pale / dull so that they never read as one of the shape colours.
SKY_RGB = (185, 215, 240)
GRASS_RGB = (150, 160, 110)

THING_CATEGORIES = [
    {"id": i + 1, "name": s, "supercategory": "shape", "isthing": 1} for i, s in enumerate(SHAPES)
]
STUFF_CATEGORIES = [
    {"id": 101, "name": "sky", "supercategory": "background", "isthing": 0},
    {"id": 102, "name": "grass", "supercategory": "background", "isthing": 0},
]
SHAPE_CATEGORY_ID = {c["name"]: c["id"] for c in THING_CATEGORIES}
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
# Side of a shape as a fraction of the short image side.
_SIDE_FRACTION = {"small": (0.16, 0.22), "big": (0.28, 0.36)}


@dataclass(frozen=True)
class ToyConfig:
    """Size knobs of the toy set (numbers of images per split) and its seed.

    The defaults are the built-in data set of the main job (`make demo`): enough images for a
    tiny model to learn the shapes in a few CPU minutes. Tests use `ToyConfig.small()`.
    """

    seed: int = 0
    png_train: int = 120
    png_val: int = 12
    refcoco_images: int = 240
    gcg_images: int = 4
    reasonseg_images: int = 4
    min_side: int = 64
    max_side: int = 160
    noise_prob: float = 0.5
    jpeg_quality: int = 90

    @classmethod
    def small(cls, **overrides: int) -> ToyConfig:
        """A few dozen images: every format and split present, generated and read in seconds."""
        sizes = dict(png_train=12, png_val=6, refcoco_images=12)
        return cls(**{**sizes, **overrides})

    def __post_init__(self) -> None:
        if self.refcoco_images < 6:
            raise ValueError(
                f"refcoco_images={self.refcoco_images}: need at least 6 so that every RefCOCO "
                "split (train, val, testA, testB) gets an image"
            )
        if not 32 <= self.min_side <= self.max_side:
            raise ValueError(
                f"need 32 <= min_side <= max_side, got {self.min_side}, {self.max_side}"
            )
        for name in ("png_train", "png_val", "gcg_images", "reasonseg_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass
class ToyObject:
    shape: str
    color: str
    size: str
    polygon: list[tuple[float, float]]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive-exclusive pixel box)

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2


@dataclass
class ToyScene:
    width: int
    height: int
    horizon: int
    noisy: bool
    noise_seed: int
    objects: list[ToyObject] = field(default_factory=list)

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (image [h, w, 3] uint8, labels [h, w] uint8).

        labels: 0 = sky, 1 = grass, 2 + i = object i. Image and labels are filled by the same PIL
        polygon rasteriser, so masks and pixels agree exactly.
        """
        h, w = self.height, self.width
        img = np.empty((h, w, 3), np.float32)
        img[: self.horizon] = SKY_RGB
        img[self.horizon :] = GRASS_RGB
        if self.noisy:
            img += np.random.default_rng(self.noise_seed).normal(0.0, 10.0, img.shape)
        image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        labels_arr = np.zeros((h, w), np.uint8)
        labels_arr[self.horizon :] = 1
        labels = Image.fromarray(labels_arr)
        draw_img, draw_lab = ImageDraw.Draw(image), ImageDraw.Draw(labels)
        for i, obj in enumerate(self.objects):
            draw_img.polygon(obj.polygon, fill=COLORS[obj.color])
            draw_lab.polygon(obj.polygon, fill=2 + i)
        return np.asarray(image), np.asarray(labels)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "circle":
        n = 24
        return [
            (cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))
            for k in range(n)
        ]
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]


def _place(
    rng: np.random.Generator, scene: ToyScene, shape: str, color: str, size: str
) -> ToyObject | None:
    """Put a shape where it overlaps no other one (rejection sampling); None if it never fits."""
    short = min(scene.width, scene.height)
    lo, hi = _SIDE_FRACTION[size]
    r = max(4.0, float(rng.uniform(lo, hi)) * short / 2)
    for _ in range(60):
        cx = float(rng.uniform(r + 1, scene.width - r - 2))
        cy = float(rng.uniform(r + 1, scene.height - r - 2))
        box = (
            int(cx - r) - 1,
            int(cy - r) - 1,
            int(math.ceil(cx + r)) + 2,
            int(math.ceil(cy + r)) + 2,
        )
        if all(
            box[2] <= o.box[0] or o.box[2] <= box[0] or box[3] <= o.box[1] or o.box[3] <= box[1]
            for o in scene.objects
        ):
            return ToyObject(shape, color, size, _polygon(shape, cx, cy, r), box)
    return None


def sample_scene(
    rng: np.random.Generator,
    cfg: ToyConfig,
    *,
    num_objects: tuple[int, int] = (2, 4),
    plural_prob: float = 0.0,
    max_plural: int = 3,
) -> ToyScene:
    """A random scene in which objects share (shape, colour) only inside one optional group.

    With probability `plural_prob` one (shape, colour) pair appears 2..max_plural times, in
    alternating sizes (small, big, small), so that a group of two is told apart by size.
    """
    aspect = float(rng.choice([0.6, 0.75, 1.0, 1.33, 1.6]))  # w / h: portrait and landscape
    long_side = int(rng.integers(max(cfg.min_side, 80), cfg.max_side + 1))
    if aspect >= 1:
        w, h = long_side, max(cfg.min_side, int(round(long_side / aspect)))
    else:
        h, w = long_side, max(cfg.min_side, int(round(long_side * aspect)))
    scene = ToyScene(
        width=w,
        height=h,
        horizon=int(h * rng.uniform(0.35, 0.6)),
        noisy=bool(rng.random() < cfg.noise_prob),
        noise_seed=int(rng.integers(2**31)),
    )
    wanted: list[tuple[str, str, str]] = []
    if rng.random() < plural_prob:
        shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
        count = int(rng.integers(2, max_plural + 1))
        wanted += [(shape, color, SIZES[k % 2]) for k in range(count)]
    n = int(rng.integers(num_objects[0], num_objects[1] + 1))
    while len(wanted) < n:
        cand = (str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(SIZES)))
        if all(c[:2] != cand[:2] for c in wanted):
            wanted.append(cand)
    for shape, color, size in wanted:
        obj = _place(rng, scene, shape, color, size)
        if obj is not None:
            scene.objects.append(obj)
    return scene


def object_groups(scene: ToyScene) -> list[list[int]]:
    """Object indices grouped by (shape, colour), ordered left to right by the first member."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, o in enumerate(scene.objects):
        by_key.setdefault((o.shape, o.color), []).append(i)
    groups = [sorted(g, key=lambda i: scene.objects[i].cx) for g in by_key.values()]
    return sorted(groups, key=lambda g: scene.objects[g[0]].cx)


def group_phrase(scene: ToyScene, group: list[int], rng: np.random.Generator) -> str:
    o = scene.objects[group[0]]
    if len(group) > 1:
        return f"{_NUMBER_WORDS.get(len(group), 'several')} {o.color} {o.shape}s"
    size = f"{o.size} " if rng.random() < 0.5 else ""
    return f"a {size}{o.color} {o.shape}"


def mask_bbox(mask: np.ndarray) -> list[int]:
    """COCO box [x, y, w, h] of a bool mask (zeros for an empty one)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def flat_polygon(obj: ToyObject) -> list[float]:
    """The object's polygon as COCO's flat [x0, y0, x1, y1, ...], rounded to 0.01 px."""
    return [round(v, 2) for xy in obj.polygon for v in xy]
