"""How precise the feature probe is: the same features fitted with the metric's own settings and with other stopping
rules of the same logistic regression, on the tune tasks of `benchmarks/transfer.py`.

For each model (original, and after `svd_projection` and `gppu` with their defaults; forget classes 3 and 7), the
head inputs of the rows `feature_probe` reads (training rows of every class; the forget class's eval rows) are
recorded once, then the probe is fitted on them with `hf_unlearn.metrics.feature_probe`'s settings (lbfgs,
`max_iter=500`, `tol=1e-4`, standardised features, C = 1) and with three other stopping rules. A metric whose value
moves with the solver's stopping point is only as precise as that movement.

    python benchmarks/probe_precision.py --cache benchmarks/.cache --output benchmarks/results/probe_precision.md
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from common import write_table
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tasks import load_task
from transfer import original_model

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.metrics import feature_probe
from hf_unlearn.models import classification_head

#: name -> LogisticRegression settings (C = 1 throughout, as the metric)
STOPPING = {
    "max_iter 50": {"max_iter": 50},
    "max_iter 100": {"max_iter": 100},
    "tol 1e-3": {"max_iter": 500, "tol": 1e-3},
    "tol 1e-10, max_iter 20000": {"max_iter": 20_000, "tol": 1e-10},
}


def probe_rows(model, data, method: str, forget_class: int):
    """The features `feature_probe` reads, of `model` after `method` ("original": as it is)."""
    args = UnlearnConfig(output_dir=tempfile.mkdtemp(), method="svd_projection" if method == "original" else method,
                         report_to="none", disable_tqdm=True, seed=0, eval_before_unlearn=False,
                         eval_after_unlearn=False)  # fmt: skip
    trainer = UnlearningTrainer(copy.deepcopy(model), args, train_dataset=data["train"], eval_dataset=data["test"],
                                forget_classes=[forget_class])  # fmt: skip
    if method != "original":
        trainer.unlearn()
    head = classification_head(trainer.model)[1]
    parts = {name: trainer.predict_logits(view, trainer.model, name, head=head)
             for name, view in trainer.metric_views.items()}  # fmt: skip
    train_features = np.concatenate([parts["forget_train"][2], parts["retain_train"][2]])
    train_labels = np.concatenate([parts["forget_train"][1], parts["retain_train"][1]])
    return train_features, train_labels, parts["eval_forget"][2], parts["eval_forget"][1]


def fits(train_features, train_labels, forget_features, forget_labels) -> dict:
    start = time.perf_counter()
    found = {"metric": feature_probe(train_features, train_labels, forget_features, forget_labels)}
    seconds = {"metric": time.perf_counter() - start}
    scaler = StandardScaler().fit(train_features)
    for name, settings in STOPPING.items():
        start = time.perf_counter()
        probe = LogisticRegression(C=1.0, **settings).fit(scaler.transform(train_features), train_labels)
        found[name] = float(np.mean(probe.predict(scaler.transform(forget_features)) == forget_labels))
        seconds[name] = time.perf_counter() - start
    return {"recall": found, "seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["shapes/vit", "shapes/resnet", "chirps/ast", "chirps/wav2vec2"])
    parser.add_argument("--methods", nargs="+", default=["original", "svd_projection", "gppu"])
    parser.add_argument("--classes", nargs="+", type=int, default=[3, 7])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--output", default="benchmarks/results/probe_precision.md")
    options = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # failed unlearning checks are not what this measures
    warnings.simplefilter("ignore", ConvergenceWarning)  # the short fits stop early on purpose
    cache = Path(options.cache) if options.cache else None
    names = ["metric", *STOPPING]
    lines = ["| model | class | model state | " + " | ".join(f"{name}: recall (s)" for name in names)
             + " | largest difference (points) |",
             "|---" * (4 + len(names)) + "|"]  # fmt: skip
    results = []
    for name in options.models:
        task, architecture = name.split("/")
        data = load_task(task, architecture, 0)
        model, _ = original_model(task, architecture, data, 0, cache)
        for forget_class in options.classes:
            for method in options.methods:
                measured = fits(*probe_rows(model, data, method, forget_class))
                recall, seconds = measured["recall"], measured["seconds"]
                spread = 100 * (max(recall.values()) - min(recall.values()))
                lines.append(f"| {name} | {forget_class} | {method} | "
                             + " | ".join(f"{100 * recall[key]:.0f} ({seconds[key]:.2f})" for key in names)
                             + f" | {spread:.0f} |")  # fmt: skip
                results.append({"model": name, "class": forget_class, "method": method, **measured})
                print(lines[-1], flush=True)
    write_table(options.output, "Feature probe: the metric's fit against other stopping rules", "probe_precision.py",
                argv, "recall of the forget class's eval rows in %, fit seconds in brackets; the metric's settings: "
                "lbfgs, max_iter 500, tol 1e-4, C 1, standardised features.", "\n".join(lines), results)  # fmt: skip


if __name__ == "__main__":
    main()
