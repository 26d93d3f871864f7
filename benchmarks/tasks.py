"""Offline development tasks for the cross-task benchmark (`benchmarks/transfer.py`): deterministic generators, no
download, each with two small transformers architectures trained from scratch.

| task | generator | classes | rows (train / test) | architectures | role |
|---|---|---|---|---|---|
| `shapes` | coloured shapes (disc, ring, square, frame, triangle, cross, bars, ...) on noisy backgrounds, 32x32 RGB | 10 | 2,000 / 500 | ViT, ResNet | tune |
| `chirps` | tone sweeps, pulse trains and noise bursts with random pitch, timing and noise, 0.5 s at 16 kHz | 10 | 2,000 / 500 | AST, Wav2Vec2 | tune |
| `textures` | oriented colour gratings x blob layouts, 16x16 RGB | 64 | 3,200 / 960 | ViT, ResNet | validate |
| `voices` | two-syllable "words" from several synthetic voices (formants over a glottal pulse train), noise, 0.5 s | 10 | 2,000 / 500 | AST, Wav2Vec2 | validate |
| `glyphs` | 20 glyphs of 3 strokes each under random affine jitter, stroke width and colour, with clutter strokes, 32x32 RGB | 20 | 2,000 / 500 | ViT, DeiT | holdout |

The tune tasks (and sklearn digits) are the only ones any default was chosen on; the validation tasks are reported,
never used to choose anything. The validation tasks have been reported after several rounds of changes, so `glyphs`
(added in stop 27, with DeiT, an architecture no other task uses) is the holdout: run after the defaults of that stop
were fixed, and reported as it came out (its first run paired the ViT with a ConvNeXt whose original never trained;
see `results/transfer_holdout.md`). Inputs are stored as model inputs
(`pixel_values` / `input_values`), computed once.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

SAMPLING_RATE = 16_000
AUDIO_SECONDS = 0.5
AST_FEATURES = {"num_mel_bins": 64, "max_length": 50}
TASKS = {
    "shapes": {"modality": "image", "architectures": ("vit", "resnet"), "role": "tune"},
    "chirps": {"modality": "audio", "architectures": ("ast", "wav2vec2"), "role": "tune"},
    "textures": {"modality": "image", "architectures": ("vit", "resnet"), "role": "validate"},
    "voices": {"modality": "audio", "architectures": ("ast", "wav2vec2"), "role": "validate"},
    "glyphs": {"modality": "image", "architectures": ("vit", "deit"), "role": "holdout"},
}
# Each task's random stream (fixed: a task added later must not change the others' data).
TASK_STREAMS = {"chirps": 0, "shapes": 1, "textures": 2, "voices": 3, "glyphs": 4}
# The original model's recipe per architecture (and the `retrain` reference's: the same), kept fixed.
TRAINING = {
    "vit": {"epochs": 30, "learning_rate": 5e-4},
    "resnet": {"epochs": 10, "learning_rate": 3e-3},
    # The ResNet's recipe: this ConvNeXt stayed at chance with it (and at lr 1e-3, or with layer scale 1) on the glyphs,
    # so the holdout uses DeiT; kept so `transfer_holdout.md`'s first run reproduces.
    "convnext": {"epochs": 10, "learning_rate": 3e-3},
    "deit": {"epochs": 30, "learning_rate": 5e-4},  # the ViT's recipe
    "ast": {"epochs": 15, "learning_rate": 2e-3},
    "wav2vec2": {"epochs": 15, "learning_rate": 2e-3},
}


# ------------------------------------------------------------------------------------------------ images
def _grid(size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return (x + 0.5) / size, (y + 0.5) / size


def _shape_mask(kind: int, size: int, rng) -> np.ndarray:
    x, y = _grid(size)
    cx, cy = rng.uniform(0.35, 0.65, 2)
    r = rng.uniform(0.18, 0.3)
    angle = rng.uniform(-0.3, 0.3)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    d = np.hypot(u, v)
    width = r * 0.35
    masks = [
        d < r,  # disc
        (d < r) & (d > r - width),  # ring
        (np.abs(u) < r) & (np.abs(v) < r),  # square
        (np.maximum(np.abs(u), np.abs(v)) < r) & (np.maximum(np.abs(u), np.abs(v)) > r - width),  # frame
        (v < r * 0.8) & (v > -r) & (np.abs(u) < (r * 0.8 - v) * 0.6),  # triangle
        ((np.abs(u) < width / 2) & (np.abs(v) < r)) | ((np.abs(v) < width / 2) & (np.abs(u) < r)),  # cross
        (np.abs(v) < r) & (np.abs(u) < r) & (np.sin(u * np.pi / width) > 0),  # vertical bars
        (np.abs(v) < r) & (np.abs(u) < r) & (np.sin(v * np.pi / width) > 0),  # horizontal bars
        (np.abs(u) + np.abs(v) < r),  # diamond
        (d < r) & (np.sin((u + v) * np.pi / width) > 0),  # striped disc
    ]
    return masks[kind].astype(np.float32)


def shapes_image(kind: int, rng, size: int = 32) -> np.ndarray:
    background = rng.uniform(0.0, 0.5, 3)[:, None, None] + rng.normal(0, 0.08, (3, size, size))
    colour = rng.uniform(0.3, 1.0, 3)
    mask = _shape_mask(kind, size, rng)
    image = background * (1 - mask) + colour[:, None, None] * mask
    return np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1).astype(np.float32)


TEXTURE_ORIENTATIONS, TEXTURE_LAYOUTS = 8, 8  # 64 classes: an oriented grating in one of 8 layouts of blobs


def textures_image(kind: int, rng, size: int = 16) -> np.ndarray:
    x, y = _grid(size)
    orientation, layout = divmod(kind, TEXTURE_LAYOUTS)
    theta = np.pi * orientation / TEXTURE_ORIENTATIONS + rng.normal(0, 0.05)
    frequency = rng.uniform(2.5, 3.5)
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (x * np.cos(theta) + y * np.sin(theta)) + rng.uniform(0, 6.3))
    layout_rng = np.random.default_rng(1000 + layout)  # the layout's blob positions are the class's
    centres = layout_rng.uniform(0.15, 0.85, (3, 2)) + rng.normal(0, 0.04, (3, 2))
    blobs = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.01) for cx, cy in centres)
    tint = rng.uniform(0.4, 1.0, 3)
    image = grating[None] * tint[:, None, None] * 0.7 + np.clip(blobs, 0, 1)[None] * 0.6
    return np.clip(image + rng.normal(0, 0.08, (3, size, size)), 0, 1).astype(np.float32)


GLYPHS, GLYPH_STROKES = 20, 3


def _segment_distance(x, y, start, end):
    direction = end - start
    t = np.clip(((x - start[0]) * direction[0] + (y - start[1]) * direction[1]) / (direction @ direction + 1e-9), 0, 1)
    return np.hypot(x - start[0] - t * direction[0], y - start[1] - t * direction[1])


def glyphs_image(kind: int, rng, size: int = 32) -> np.ndarray:
    """Glyph `kind`: 3 strokes whose end points are the class's (fixed by `kind`), under a random rotation, scale and
    shift, drawn with a random width and colour over a dark noisy background with 2 clutter strokes of random
    placement."""
    x, y = _grid(size)
    strokes = np.random.default_rng(2000 + kind).uniform(0.2, 0.8, (GLYPH_STROKES, 2, 2))
    angle, scale, shift = rng.uniform(-0.35, 0.35), rng.uniform(0.8, 1.15), rng.normal(0, 0.05, 2)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    strokes = (strokes - 0.5) @ rotation.T + 0.5 + shift
    width = rng.uniform(0.035, 0.06)
    mask = np.zeros((size, size), np.float32)
    for start, end in strokes:
        mask = np.maximum(mask, (_segment_distance(x, y, start, end) < width).astype(np.float32))
    clutter = np.zeros((size, size), np.float32)
    for start, end in rng.uniform(0.05, 0.95, (2, 2, 2)):
        clutter = np.maximum(clutter, (_segment_distance(x, y, start, end) < width * 0.7).astype(np.float32))
    background = rng.uniform(0.0, 0.3, 3)[:, None, None] + rng.normal(0, 0.06, (3, size, size))
    colour = rng.uniform(0.5, 1.0, 3)[:, None, None]
    image = background + clutter * rng.uniform(0.2, 0.5) + mask * (colour - background)
    return np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------------ audio
def _noise(clip, snr_db, rng):
    noise = rng.standard_normal(len(clip))
    power = np.mean(clip**2) + 1e-8
    return clip + noise * np.sqrt(power / 10 ** (snr_db / 10))


def chirps_clip(kind: int, rng) -> np.ndarray:
    """Ten sound events: rising / falling sweeps in two bands, pulse trains at two rates, a two-tone trill, band
    noise bursts (low / high), and an amplitude-modulated tone."""
    n = int(AUDIO_SECONDS * SAMPLING_RATE)
    length = int(rng.uniform(0.25, 0.4) * SAMPLING_RATE)
    t = np.arange(length) / SAMPLING_RATE
    base = rng.uniform(0.85, 1.15)
    envelope = np.hanning(length)
    if kind in (0, 1, 2, 3):
        low, high = (400, 1600) if kind < 2 else (1800, 5000)
        start, end = (low, high) if kind % 2 == 0 else (high, low)
        frequency = base * (start + (end - start) * t / t[-1])
        wave = np.sin(2 * np.pi * np.cumsum(frequency) / SAMPLING_RATE)
    elif kind in (4, 5):
        rate = 12 if kind == 4 else 30
        wave = np.sin(2 * np.pi * 1000 * base * t) * (np.sin(2 * np.pi * rate * t) > 0.6)
    elif kind == 6:
        wave = np.sin(2 * np.pi * np.where(np.sin(2 * np.pi * 15 * t) > 0, 700, 1100) * base * t)
    elif kind in (7, 8):
        spectrum = np.fft.rfft(rng.standard_normal(length))
        frequencies = np.fft.rfftfreq(length, 1 / SAMPLING_RATE)
        band = (frequencies > 300) & (frequencies < 1200) if kind == 7 else (frequencies > 3000) & (frequencies < 6000)
        wave = np.fft.irfft(spectrum * band, length)
        wave /= np.abs(wave).max() + 1e-8
    else:
        wave = np.sin(2 * np.pi * 2200 * base * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 6 * t))
    clip = np.zeros(n)
    start = rng.integers(0, n - length)
    clip[start : start + length] = wave * envelope * rng.uniform(0.3, 1.0)
    return np.clip(_noise(clip, rng.uniform(5, 25), rng), -1, 1).astype(np.float32)


# Vowel formants (Hz) of the ten two-syllable "words"; each word is a pair of vowels.
VOWELS = {"a": (730, 1090), "i": (270, 2290), "u": (300, 870), "e": (530, 1840), "o": (570, 840)}
WORD_VOWELS = ["ai", "ia", "uo", "ou", "ee", "ae", "ui", "oa", "ie", "eu"]


def voices_clip(kind: int, rng, voice: int) -> np.ndarray:
    """A two-syllable word from voice `voice` (pitch 90-260 Hz, vocal-tract scale 0.85-1.2): each syllable a glottal
    pulse train filtered by two formant resonators, plus breath noise and background noise."""
    voice_rng = np.random.default_rng(500 + voice)
    pitch, tract = voice_rng.uniform(90, 260), voice_rng.uniform(0.85, 1.2)
    n = int(AUDIO_SECONDS * SAMPLING_RATE)
    speed = rng.uniform(0.85, 1.15)
    syllables = []
    for vowel in WORD_VOWELS[kind]:
        length = int(0.15 * speed * SAMPLING_RATE)
        t = np.arange(length) / SAMPLING_RATE
        f0 = pitch * rng.uniform(0.95, 1.05) * (1 + 0.05 * np.sin(2 * np.pi * 4 * t))
        source = (np.sin(np.pi * np.cumsum(f0) / SAMPLING_RATE) ** 16) - 0.1 + rng.normal(0, 0.03, length)
        wave = np.zeros(length)
        for formant in VOWELS[vowel]:
            frequency = formant * tract
            radius = np.exp(-np.pi * 100 / SAMPLING_RATE)
            a1, a2 = -2 * radius * np.cos(2 * np.pi * frequency / SAMPLING_RATE), radius**2
            filtered = lfilter([1.0], [1.0, a1, a2], source)
            wave += filtered / (np.abs(filtered).max() + 1e-8)
        syllables.append(wave * np.hanning(length))
        syllables.append(np.zeros(int(0.04 * speed * SAMPLING_RATE)))
    voice_wave = np.concatenate(syllables)[:n]
    clip = np.zeros(n)
    start = rng.integers(0, max(1, n - len(voice_wave)))
    clip[start : start + len(voice_wave)] = voice_wave * rng.uniform(0.3, 1.0)
    return np.clip(_noise(clip, rng.uniform(8, 25), rng), -1, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------------ datasets
def _label_names(task):
    if task == "textures":
        return [f"o{o}-l{layout}" for o in range(TEXTURE_ORIENTATIONS) for layout in range(TEXTURE_LAYOUTS)]
    if task == "voices":
        return WORD_VOWELS
    if task == "glyphs":
        return [f"glyph-{k}" for k in range(GLYPHS)]
    if task == "chirps":
        return ["sweep-up-low", "sweep-down-low", "sweep-up-high", "sweep-down-high", "pulses-slow", "pulses-fast",
                "trill", "noise-low", "noise-high", "tremolo"]  # fmt: skip
    return ["disc", "ring", "square", "frame", "triangle", "cross", "v-bars", "h-bars", "diamond", "striped-disc"]


def _raw_rows(task: str, split: str, seed: int):
    names = _label_names(task)
    per_class = {"textures": (50, 15), "glyphs": (100, 25)}.get(task, (200, 50))[split == "test"]
    rng = np.random.default_rng([seed, {"train": 0, "test": 1}[split], TASK_STREAMS[task]])
    labels = rng.permutation(np.repeat(np.arange(len(names)), per_class))
    if task == "shapes":
        return [shapes_image(int(k), rng) for k in labels], labels
    if task == "textures":
        return [textures_image(int(k), rng) for k in labels], labels
    if task == "glyphs":
        return [glyphs_image(int(k), rng) for k in labels], labels
    if task == "chirps":
        return [chirps_clip(int(k), rng) for k in labels], labels
    # voices: train and test speakers differ (voices 0-5 train, 6-8 test)
    voices = rng.integers(0, 6, len(labels)) if split == "train" else rng.integers(6, 9, len(labels))
    return [voices_clip(int(k), rng, int(v)) for k, v in zip(labels, voices, strict=True)], labels


def load_task(task: str, architecture: str, seed: int = 0):
    """`DatasetDict` (`train` / `test`) of model inputs for `architecture` and `ClassLabel` labels."""
    import datasets

    if task not in TASKS:
        raise ValueError(f"`task` must be one of {sorted(TASKS)}, got {task!r}.")
    names = _label_names(task)
    splits = {}
    for split in ("train", "test"):
        inputs, labels = _raw_rows(task, split, seed)
        if TASKS[task]["modality"] == "image":
            column, values = "pixel_values", np.stack(inputs)
            feature = datasets.Array3D(shape=values.shape[1:], dtype="float32")
        elif architecture == "ast":
            from transformers import ASTFeatureExtractor

            extractor = ASTFeatureExtractor(sampling_rate=SAMPLING_RATE, **AST_FEATURES)
            values = extractor(inputs, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_values"]
            column, feature = "input_values", datasets.Array2D(shape=values.shape[1:], dtype="float32")
        else:
            values = np.stack([(clip - clip.mean()) / (clip.std() + 1e-7) for clip in inputs]).astype(np.float32)
            column, feature = "input_values", datasets.Sequence(datasets.Value("float32"), length=values.shape[1])
        features = datasets.Features({column: feature, "label": datasets.ClassLabel(names=names)})
        splits[split] = datasets.Dataset.from_dict({column: values, "label": labels.tolist()}, features=features)
    return datasets.DatasetDict(splits)


def build_model(task: str, architecture: str, seed: int = 0):
    """A small, randomly initialised transformers classifier for `task`."""
    from transformers import (
        ASTConfig,
        ASTForAudioClassification,
        ConvNextConfig,
        ConvNextForImageClassification,
        DeiTConfig,
        DeiTForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        Wav2Vec2Config,
        Wav2Vec2ForSequenceClassification,
        set_seed,
    )

    names = _label_names(task)
    labels = {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}
    set_seed(seed)
    size = 16 if task == "textures" else 32
    if architecture == "vit":
        config = ViTConfig(image_size=size, num_channels=3, patch_size=4, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=3, num_attention_heads=4, **labels)  # fmt: skip
        return ViTForImageClassification(config)
    if architecture == "resnet":
        config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
                              layer_type="basic", **labels)  # fmt: skip
        return ResNetForImageClassification(config)
    if architecture == "deit":
        config = DeiTConfig(image_size=size, num_channels=3, patch_size=4, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=3, num_attention_heads=4, **labels)  # fmt: skip
        return DeiTForImageClassification(config)
    if architecture == "convnext":
        config = ConvNextConfig(num_channels=3, patch_size=2, num_stages=3, hidden_sizes=[16, 32, 64],
                                depths=[1, 1, 1], **labels)  # fmt: skip
        return ConvNextForImageClassification(config)
    if architecture == "ast":
        config = ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           patch_size=16, frequency_stride=16, time_stride=8, **AST_FEATURES, **labels)  # fmt: skip
        return ASTForAudioClassification(config)
    if architecture == "wav2vec2":
        config = Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                conv_dim=(32, 32, 32, 32), conv_stride=(5, 4, 4, 2), conv_kernel=(10, 4, 4, 2),
                                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                classifier_proj_size=64, do_stable_layer_norm=True, mask_time_prob=0.0,
                                **labels)  # fmt: skip
        return Wav2Vec2ForSequenceClassification(config)
    raise ValueError(f"Unknown architecture {architecture!r} for task {task!r}.")
