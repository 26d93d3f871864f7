"""Every paper method with its defaults on transformers classifier architectures that no other test or benchmark
uses: does it run, does it forget, what does it keep.

Each architecture is a tiny random config (a few thousand to a few hundred thousand parameters) of a model type of
`AutoModelForImageClassification` / `AutoModelForAudioClassification`, trained from scratch in the run on offline
data (images: scikit-learn's digits at 32x32, grey copied to RGB; audio: 0.5 s tones at 8 kHz, one pitch per
class, with noise; Whisper and Wav2Vec2-BERT get band energies as their input features). Then gppu, svd_projection and
remain_geometry forget class 3 with `UnlearnConfig(output_dir, method=m, seed=0)` and nothing else. The table gives the
original's test accuracy on the forget class and the others, each method's, its time, and the run's own check
(`forgotten`: the forget class at most 5 % and the retain accuracy at most 10 points down) or the error it raised.

    python benchmarks/architectures.py --output benchmarks/results/architectures.md

Each architecture runs in a fresh process (`--one NAME`). The originals are small models trained for seconds, some
weak (their test accuracy is in the table): this is a check that the methods run and forget on these structures,
not a measure of their quality there (that is `benchmarks/transfer.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import numpy as np

#: Model type -> its tiny config (fields of its config class); the audio conv feature encoder's shape is shared.
AUDIO_CONV = {"conv_dim": (8, 8), "conv_stride": (5, 2), "conv_kernel": (10, 3), "num_conv_pos_embeddings": 8,
              "num_conv_pos_embedding_groups": 2, "classifier_proj_size": 8}  # fmt: skip
TRANSFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
IMAGES = {
    "beit": {**TRANSFORMER, "image_size": 32, "patch_size": 4, "use_mean_pooling": True},
    "data2vec-vision": {**TRANSFORMER, "image_size": 32, "patch_size": 4},
    "dinov2": {**TRANSFORMER, "image_size": 32, "patch_size": 4},
    "dinov2_with_registers": {**TRANSFORMER, "image_size": 32, "patch_size": 4},
    "ijepa": {**TRANSFORMER, "image_size": 32, "patch_size": 4},
    "vit_msn": {**TRANSFORMER, "image_size": 32, "patch_size": 4},
    "swin": {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2], "window_size": 4},
    "swinv2": {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2],
               "window_size": 4},  # fmt: skip
    "focalnet": {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "focal_levels": [2, 2],
                 "focal_windows": [3, 3]},  # fmt: skip
    "hiera": {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "image_size": [32, 32], "patch_size": [3, 3],
              "patch_stride": [2, 2], "patch_padding": [1, 1], "masked_unit_size": [4, 4], "query_stride": [2, 2],
              "num_query_pool": 1},  # fmt: skip
    "pvt_v2": {"hidden_sizes": [16, 32], "depths": [1, 1], "num_encoder_blocks": 2, "num_attention_heads": [1, 2],
               "sr_ratios": [2, 1], "patch_sizes": [7, 3], "strides": [4, 2], "mlp_ratios": [2, 2]},  # fmt: skip
    "segformer": {"hidden_sizes": [16, 32], "depths": [1, 1], "num_encoder_blocks": 2, "num_attention_heads": [1, 2],
                  "sr_ratios": [2, 1], "patch_sizes": [7, 3], "strides": [4, 2], "mlp_ratios": [2, 2],
                  "decoder_hidden_size": 32},  # fmt: skip
    "poolformer": {"hidden_sizes": [16, 32], "depths": [1, 1], "num_encoder_blocks": 2, "patch_sizes": [7, 3],
                   "strides": [4, 2], "padding": [2, 1], "pool_size": 3},  # fmt: skip
    "swiftformer": {"depths": [1, 1, 1, 1], "embed_dims": [16, 16, 32, 32]},
    "mobilevit": {"hidden_sizes": [16, 24, 32], "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64], "image_size": 32,
                  "patch_size": 2},  # fmt: skip
    "mobilenet_v2": {"depth_multiplier": 0.25, "image_size": 32},
    "bit": {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], "layer_type": "bottleneck",
            "num_groups": 4},  # fmt: skip
    "convnextv2": {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2},
    "regnet": {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], "groups_width": 8},
    "efficientnet": {"image_size": 32, "width_coefficient": 0.1, "depth_coefficient": 0.1, "hidden_dim": 128},
}
AUDIO = {
    "data2vec-audio": {**TRANSFORMER, **AUDIO_CONV},
    "sew": {**TRANSFORMER, **AUDIO_CONV},
    "sew-d": {**TRANSFORMER, **AUDIO_CONV, "squeeze_factor": 1, "position_buckets": 16, "max_relative_positions": 16},
    "unispeech-sat": {**TRANSFORMER, **AUDIO_CONV},
    "wavlm": {**TRANSFORMER, **AUDIO_CONV},
    "wav2vec2-conformer": {**TRANSFORMER, **AUDIO_CONV},
    "whisper": {"d_model": 32, "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 2,
                "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_mel_bins": 16,
                "max_source_positions": 50},  # fmt: skip
    "wav2vec2-bert": {**TRANSFORMER, "feature_projection_input_dim": 16},
}
METHODS = ("gppu", "svd_projection", "remain_geometry")
FORGET_CLASS, CLASSES = 3, 10


def build(model_type: str):
    from transformers import AutoConfig, AutoModelForAudioClassification, AutoModelForImageClassification

    audio = model_type in AUDIO
    fields = AUDIO[model_type] if audio else {**IMAGES[model_type], "num_channels": 3}
    config = AutoConfig.for_model(model_type, **fields, num_labels=CLASSES)
    return (AutoModelForAudioClassification if audio else AutoModelForImageClassification).from_config(config)


def data(model_type: str) -> dict:
    """`(column, {"train": (inputs, labels), "test": ...})`: the model input's column name and the splits."""
    if model_type not in AUDIO:
        from hf_unlearn.examples.digits import load_digits_dataset

        digits = load_digits_dataset(image_size=32)
        return "pixel_values", {
            split: (np.repeat(np.asarray(digits[split].with_format("numpy")["pixel_values"], np.float32), 3, axis=1),
                    np.asarray(digits[split]["label"]))
            for split in ("train", "test")
        }  # fmt: skip
    generator = np.random.default_rng(0)

    def clips(rows):
        labels = np.arange(rows) % CLASSES
        time_axis = np.arange(4000) / 8000
        pitch = 200 + 150 * labels[:, None] * generator.uniform(0.97, 1.03, (rows, 1))
        x = np.sin(2 * np.pi * pitch * time_axis + generator.uniform(0, 6, (rows, 1))) * generator.uniform(0.5, 1, (rows, 1))
        x = (x + 0.3 * generator.standard_normal(x.shape)).astype(np.float32)
        if model_type == "whisper":  # (16 bands, 100 frames)
            x = np.abs(np.fft.rfft(x.reshape(rows, 100, 40), axis=2))[:, :, :16].transpose(0, 2, 1)
        elif model_type == "wav2vec2-bert":  # (40 frames, 16 bands of 240 Hz: every class's pitch is in one)
            x = np.abs(np.fft.rfft(x.reshape(rows, 40, 100), axis=2))[:, :, :48].reshape(rows, 40, 16, 3).sum(-1)
        return x.astype(np.float32), labels

    column = {"whisper": "input_features", "wav2vec2-bert": "input_features"}.get(model_type, "input_values")
    return column, {"train": clips(600), "test": clips(200)}


def run_one(model_type: str) -> dict:
    import datasets
    import torch
    from transformers import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = build(model_type)
    column, raw = data(model_type)
    splits = {split: datasets.Dataset.from_dict({column: x, "label": y.tolist()}).with_format("torch")
              for split, (x, y) in raw.items()}  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        return train_and_unlearn(model_type, model, splits, workdir)


def train_and_unlearn(model_type: str, model, splits: dict, workdir: str) -> dict:
    from transformers import Trainer, TrainingArguments

    from hf_unlearn import UnlearnConfig, UnlearningTrainer

    start = time.perf_counter()
    recipe = TrainingArguments(os.path.join(workdir, "original"), num_train_epochs=8, learning_rate=1e-3,
                               per_device_train_batch_size=32, report_to="none", disable_tqdm=True, save_strategy="no",
                               seed=0)  # fmt: skip
    Trainer(model=model, args=recipe, train_dataset=splits["train"]).train()
    result = {"architecture": model_type, "parameters": sum(p.numel() for p in model.parameters()),
              "train_seconds": time.perf_counter() - start, "methods": {}}  # fmt: skip
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for method in METHODS:
        model.load_state_dict(state)
        args = UnlearnConfig(output_dir=os.path.join(workdir, method), method=method, seed=0, disable_tqdm=True,
                             report_to="none")  # fmt: skip
        try:
            output = UnlearningTrainer(model, args, train_dataset=splits["train"], eval_dataset=splits["test"],
                                       forget_classes=[FORGET_CLASS]).unlearn()  # fmt: skip
        except Exception as error:  # noqa: BLE001 - what a user would get is the result
            traceback.print_exc()
            result["methods"][method] = {"error": f"{type(error).__name__}: {error}"[:300]}
            continue
        metrics, original = output.metrics, output.original_metrics or {}
        result["original"] = {key: original.get(key) for key in ("forget_accuracy", "retain_accuracy")}
        result["methods"][method] = {
            "forget_accuracy": metrics["forget_accuracy"], "retain_accuracy": metrics["retain_accuracy"],
            "forgotten": output.forgotten, "unlearn_seconds": metrics["unlearn_seconds"],
        }  # fmt: skip
    return result


def table(results: list[dict]) -> str:
    lines = ["| architecture | parameters | original forget / retain | "
             + " | ".join(f"{method}: forget / retain, s, check" for method in METHODS) + " |",
             "|---|---|---|" + "---|" * len(METHODS)]  # fmt: skip
    for r in results:
        original = r.get("original") or {}
        cells = []
        for method in METHODS:
            m = r["methods"].get(method, {"error": "not run"})
            if "error" in m:
                cells.append(f"**error**: {m['error'][:120]}")
            else:
                check = {True: "forgotten", False: "**failed**", None: "-"}[m["forgotten"]]
                cells.append(f"{100 * m['forget_accuracy']:.1f} / {100 * m['retain_accuracy']:.1f}, "
                             f"{m['unlearn_seconds']:.1f}, {check}")  # fmt: skip
        before = (f"{100 * original['forget_accuracy']:.1f} / {100 * original['retain_accuracy']:.1f}"
                  if original.get("retain_accuracy") is not None else "-")  # fmt: skip
        lines.append(f"| {r['architecture']} | {r['parameters']:,} | {before} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", choices=[*IMAGES, *AUDIO], default=[*IMAGES, *AUDIO])
    parser.add_argument("--output", default="benchmarks/results/architectures.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.one:
        print("RESULT " + json.dumps(run_one(options.one), default=str), flush=True)
        return
    from common import measure_in_process, write_table

    results = []
    for model_type in options.architectures:
        started = time.perf_counter()
        found = measure_in_process([sys.executable, __file__, "--one", model_type], model_type)
        results.append(found or {"architecture": model_type, "parameters": 0,
                                 "methods": {m: {"error": "the process failed"} for m in METHODS}})  # fmt: skip
        print(f"{model_type}: {time.perf_counter() - started:.0f} s", flush=True)
    setting = (f"tiny random configs trained from scratch (8 epochs, AdamW 1e-3), then each method with its defaults, "
               f"forgetting class {FORGET_CLASS} of {CLASSES}; test accuracy in %, the method's seconds, the run's own "
               "check.")  # fmt: skip
    write_table(options.output, "Paper methods on further architectures, library defaults", "architectures.py", argv,
                setting, table(results), results)  # fmt: skip


if __name__ == "__main__":
    main()
