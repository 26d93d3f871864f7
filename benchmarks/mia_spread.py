"""Why the entropy MIA of one method on one model moves by tens of points between seeds: the attack, or the model?

For each request (tune tasks only) and seed, the method runs with its defaults; then the entropy attack of
`hf_unlearn.metrics.mia_entropy` is refitted on the same rows (members: retain training rows, non-members: eval rows of
the retained classes) to report its own power (ROC AUC of entropy, members against non-members), its threshold, and
where the forget training rows' entropies lie. A stable threshold with forget rows on either side of it means the
models differ (forget rows confidently wrong against uncertain), not the measurement.

    python benchmarks/mia_spread.py --cache benchmarks/.cache --requests remain_geometry:chirps/ast:7 \\
        gppu:chirps/wav2vec2:7 gppu:shapes/vit:7 --seeds 0 1 2 --output benchmarks/results/mia_spread.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import write_results
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from transfer import tune_model

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.metrics import prediction_entropy, softmax


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", nargs="+", required=True, help="method:task/architecture:class")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--output", required=True)
    options = parser.parse_args(argv)
    cache = Path(options.cache) if options.cache else None
    lines = [
        "# Entropy MIA across seeds: the attack's power and threshold, and the forget rows' entropy", "",
        f"`python benchmarks/mia_spread.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
        "Entropies in nats (10th / 50th / 90th percentile). AUC: the attack's own power, members against non-members "
        "(0.5: none).", "",
        "| method | model | class | seed | MIA (%) | attack AUC | threshold | members | non-members | forget rows |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    results = []
    for request in options.requests:
        method, name, forget_class = request.split(":")
        data, model = tune_model(name, cache, "diagnoses of the defaults' behaviour feed choices")
        for seed in options.seeds:
            args = UnlearnConfig(output_dir=tempfile.mkdtemp(), method=method, seed=seed, report_to="none",
                                 disable_tqdm=True, eval_before_unlearn=False)  # fmt: skip
            trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"],
                                        forget_classes=[int(forget_class)])  # fmt: skip
            result = trainer.unlearn()
            entropy = {part: prediction_entropy(softmax(trainer.predict_logits(trainer.metric_views[part])[0]))
                       for part in ("retain_train", "eval_retain", "forget_train")}  # fmt: skip
            features = np.concatenate([entropy["retain_train"], entropy["eval_retain"]]).reshape(-1, 1)
            members = np.concatenate([np.ones(len(entropy["retain_train"])), np.zeros(len(entropy["eval_retain"]))])
            attack = LogisticRegression(class_weight="balanced").fit(features, members)
            threshold = float(-attack.intercept_[0] / attack.coef_[0, 0])
            auc = float(roc_auc_score(members, -features[:, 0]))  # lower entropy: member
            spread = {part: np.percentile(values, [10, 50, 90]).tolist() for part, values in entropy.items()}
            results.append({"method": method, "model": name, "class": int(forget_class), "seed": seed,
                            "mia_entropy": result.metrics["mia_entropy"], "attack_auc": auc, "threshold": threshold,
                            "entropy_percentiles": spread})  # fmt: skip
            cells = " | ".join(" / ".join(f"{value:.3f}" for value in spread[part])
                               for part in ("retain_train", "eval_retain", "forget_train"))  # fmt: skip
            lines.append(f"| {method} | {name} | {forget_class} | {seed} | {100 * result.metrics['mia_entropy']:.1f} | "
                         f"{auc:.3f} | {threshold:.3f} | {cells} |")  # fmt: skip
    write_results(options.output, "\n".join(lines) + "\n", results)


if __name__ == "__main__":
    main()
