"""Unlearning metrics, as plain functions of logits and labels (their labels, directions and formats for reports
and cards: `hf_unlearn.metric_registry`).

Directions, for a class-forgetting request:

| metric | what it is | good value |
|---|---|---|
| `forget_accuracy` | accuracy on eval rows of the forget classes | low (a retrained model: 0) |
| `retain_accuracy` | accuracy on eval rows of the retained classes | high, close to the original |
| `test_accuracy` | accuracy on the eval rows of both (rows of classes unlearned in earlier requests are left out: see `unlearned_before_accuracy`) | the retained classes' share of it close to the original |
| `forget_train_accuracy` | accuracy on the forget training rows | low (retrain: 0 for classes) |
| `forget_train_worst_class_accuracy` | (several forget classes) the highest of their training-row accuracies | low |
| `retain_train_accuracy` | accuracy on the retain training rows | high |
| `per_class_accuracy` | eval accuracy per class, keyed by label name | forget classes low, others unchanged |
| `mia_entropy` | share of forget training rows an entropy attack calls "member" | close to retrain (about 0) |
| `mia_efficacy` | share of forget training rows a confidence attack calls "non-member" | close to retrain (about 1) |
| `mia_entropy_power` | the entropy attack's own power: ROC AUC of entropy separating its members from its non-members | context: about 0.5 means the attack cannot tell them apart |
| `mia_auc` | (sample-level only) attack AUC, forget rows vs held-out rows of the same classes | close to retrain (~0.5) |
| `unlearned_before_accuracy` | eval accuracy on classes the model unlearned in earlier requests (if any) | low (stays forgotten) |
| `feature_probe` | (classes) recall of the forget classes by a linear probe on the model's frozen head inputs, fitted on training rows of every class, scored on eval rows of the forget classes | close to retrain (the original: high) |

`feature_probe` measures depth: a model can stop predicting a class while its features still carry it (a head-only
edit hides the class; a probe finds it again). A retrained model's features also separate a class it never learned
to some degree, so the goal is closeness to retrain's value, not 0. The probe is fitted to lbfgs's tolerance 1e-4
(at most 500 iterations): on ill-conditioned features, stopping earlier moved its value by up to 28 points, while a
fit to tolerance 1e-10 agreed within 2 (`benchmarks/results/probe_precision.md`).

For sample-level forgetting (`forget_indices`) the eval split holds no forgotten rows, so `forget_accuracy` is None
(the forgotten rows' accuracy is `forget_train_accuracy`) and `retain_accuracy` is the accuracy on the whole eval
split, less its rows of classes unlearned in earlier requests. All accuracies and attack rates are
fractions in [0, 1].

Both attacks are fitted on the model under test, with retain training rows as members and eval rows of the
retained classes as non-members (the shadow-free attacks of SFR-on and SalUn / l1-sparse), then applied to the
forget training rows. Each side is capped at `max_attack_samples` (random, seeded) so the SVC stays fast.
`mia_entropy_power` says how much such an attack can see: on a model as sure of held-out rows as of training rows
(AUC about 0.5) its threshold separates nothing, and `mia_entropy` then reads only whether the forget rows are
predicted as confidently as the others - which still differs between models (a retrained model is unsure of a class
it never saw), but is not evidence of membership (`benchmarks/results/mia_spread.md`).

Generators (GANs, diffusion models) are measured with a judge classifier on generated samples
(`generative_metrics`; the discriminator rows are GAN-only):

| metric | what it is | good value |
|---|---|---|
| `forget_share` | share of generated samples the judge assigns to a forget class (conditional: of the samples generated *for* a forget class) | class forgetting: about 0 (before: the class's natural rate) |
| `retain_judge_accuracy` | (conditional) share of samples generated for a retained class that the judge assigns to it | close to the original |
| `frechet_distance` | Frechet distance between judge features of generated (retained) samples and of real retained rows | close to the original (lower = closer to the data) |
| `discriminator_attack_auc` | AUC of the discriminator's score separating forgotten training rows from held-out rows of their classes | close to a retrained GAN's |
| `forget_discriminator_score` / `generated_discriminator_score` | mean discriminator probability "real" on the forgotten rows / on generated samples | forgotten rows scored like generated ones |
| `class_shares` | share of generated samples per class (judge's call), keyed by label name; conditional generators: of the samples generated for retained classes | forget classes about 0, the others as before |
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from .data import class_name
from .metric_registry import Metric, computed_metrics, mean_gap_keys, scalar_metric_keys


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64: in float32 every row whose top logit leads by more than about 17 has a
    confidence of exactly 1.0, and the attacks that rank rows by it see ties; in float64 that happens past a lead
    of about 37."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of rows whose argmax equals the label; None for no rows."""
    if len(labels) == 0:
        return None
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


def worst_class_accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """The highest per-class accuracy among the classes of `labels` when they are several (None for one): of several
    forget classes, the one still most recognised, which a pooled accuracy hides when that class is small."""
    classes = np.unique(labels)
    if len(classes) < 2:
        return None
    logits, labels = np.asarray(logits), np.asarray(labels)
    return max(accuracy(logits[labels == label], labels[labels == label]) for label in classes)


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, id2label: dict | None = None) -> dict[str, float]:
    """Accuracy for each class present in `labels`, keyed by its name (`class_name`)."""
    predictions = np.asarray(logits).argmax(axis=1)
    return {class_name(id2label, class_id): float((predictions[labels == class_id] == class_id).mean())
            for class_id in np.unique(labels)}  # fmt: skip


def prediction_entropy(probabilities: np.ndarray) -> np.ndarray:
    return -(probabilities * np.log(np.clip(probabilities, 1e-12, None))).sum(axis=1)


def true_class_confidence(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probabilities[np.arange(len(labels)), labels]


def _attack_training_set(member: np.ndarray, non_member: np.ndarray, max_samples: int, seed: int):
    rng = np.random.default_rng(seed)

    def cap(values):
        return values[rng.choice(len(values), max_samples, replace=False)] if len(values) > max_samples else values

    member, non_member = cap(member), cap(non_member)
    features = np.concatenate([member, non_member]).reshape(-1, 1)
    targets = np.concatenate([np.ones(len(member)), np.zeros(len(non_member))])
    return features, targets


def mia_entropy(
    member_probs: np.ndarray,
    non_member_probs: np.ndarray,
    target_probs: np.ndarray,
    *,
    max_attack_samples: int = 5000,
    seed: int = 0,
) -> float | None:
    """Entropy attack (SFR-on): share of `target` rows a balanced logistic regression on softmax entropy, fitted
    members vs non-members, calls "member". None when a part is empty."""
    if min(len(member_probs), len(non_member_probs), len(target_probs)) == 0:
        return None
    features, targets = _attack_training_set(
        prediction_entropy(member_probs), prediction_entropy(non_member_probs), max_attack_samples, seed
    )
    attack = LogisticRegression(class_weight="balanced").fit(features, targets)
    return float(attack.predict(prediction_entropy(target_probs).reshape(-1, 1)).mean())


def attack_power(member_probs: np.ndarray, non_member_probs: np.ndarray) -> float | None:
    """ROC AUC of softmax entropy separating `member` rows (lower entropy) from `non_member` rows, all of them (no
    cap): 1 when every member is more certain than every non-member, about 0.5 when entropy cannot tell them apart.
    None when a side is empty."""
    if min(len(member_probs), len(non_member_probs)) == 0:
        return None
    membership = np.concatenate([np.ones(len(member_probs)), np.zeros(len(non_member_probs))])
    entropy = np.concatenate([prediction_entropy(member_probs), prediction_entropy(non_member_probs)])
    return float(roc_auc_score(membership, -entropy))


def mia_efficacy(
    member_probs: np.ndarray,
    member_labels: np.ndarray,
    non_member_probs: np.ndarray,
    non_member_labels: np.ndarray,
    target_probs: np.ndarray,
    target_labels: np.ndarray,
    *,
    max_attack_samples: int = 2000,
    seed: int = 0,
    balanced: bool = True,
) -> float | None:
    """Confidence attack (SalUn / l1-sparse "MIA-efficacy"): an RBF SVC on the true-class softmax confidence,
    fitted members vs non-members (class-weighted unless `balanced=False`); the share of `target` rows it calls
    "non-member". None when a part is empty."""
    if min(len(member_probs), len(non_member_probs), len(target_probs)) == 0:
        return None
    features, targets = _attack_training_set(
        true_class_confidence(member_probs, member_labels),
        true_class_confidence(non_member_probs, non_member_labels),
        max_attack_samples,
        seed,
    )
    if len(np.unique(targets)) < 2:
        return None
    attack = SVC(C=3.0, gamma="auto", kernel="rbf", class_weight="balanced" if balanced else None)
    attack.fit(features, targets)
    target_features = true_class_confidence(target_probs, target_labels).reshape(-1, 1)
    return float(1.0 - attack.predict(target_features).mean())


def deep_unlearning_mia(parts: dict, class_level: bool) -> float | None:
    """The membership attack of Deep Unlearning (Kodge et al. 2024; official code `SVC_MIA` with shadow members the
    retain training rows, shadow non-members the forget training rows, target the forget class's eval rows): an RBF
    SVC (C = 3, no class weights, as there) on the true-class confidence, and the share of the forget class's eval
    rows it calls non-member, i.e. as forgotten as the forget training rows look. About 100 % after class
    forgetting; near 0 for the original, whose forget rows look like the retained ones. Fitted on the rows the
    metrics score (`max_metric_train_samples`, each side capped at 2000). Class requests only (None otherwise).
    Not measured by default: `register_metric(DEEP_UNLEARNING_MIA)` adds it to every classifier request."""
    if not class_level:
        return None
    (retain_logits, retain_labels), (forget_logits, forget_labels) = parts["retain_train"], parts["forget_train"]
    test_logits, test_labels = parts["eval_forget"]
    return mia_efficacy(softmax(retain_logits), retain_labels, softmax(forget_logits), forget_labels,
                        softmax(test_logits), test_labels, balanced=False)  # fmt: skip


#: The optional Deep Unlearning MIA (`deep_unlearning_mia`): `register_metric(DEEP_UNLEARNING_MIA)` to measure it.
DEEP_UNLEARNING_MIA = Metric("mia_deep_unlearning", ("classifier",),
                             "Deep Unlearning MIA: forget eval rows called non-member", "close to retrain (~100 %)",
                             compute=deep_unlearning_mia)  # fmt: skip


def mia_auc(
    target_probs: np.ndarray, target_labels: np.ndarray, held_out_probs: np.ndarray, held_out_labels: np.ndarray
) -> float | None:
    """Item-level attack: ROC AUC of the true-class confidence separating `target` (forgotten training rows) from
    held-out rows of the same classes. 0.5 = indistinguishable (what a retrained model gives); 1 = fully exposed.

    The held-out rows are weighted so that their classes count as often as among the target rows (target rows of a
    class without held-out rows are left out): otherwise a class that is easy for the model and common among the
    target rows would move the AUC away from 0.5 on its own."""
    classes = np.intersect1d(np.unique(target_labels), np.unique(held_out_labels))
    if len(classes) == 0:
        return None
    target = np.isin(target_labels, classes)
    keep = np.isin(held_out_labels, classes)
    target_labels, held_out_labels = target_labels[target], held_out_labels[keep]
    scores = np.concatenate(
        [
            true_class_confidence(target_probs[target], target_labels),
            true_class_confidence(held_out_probs[keep], held_out_labels),
        ]
    )
    target_counts = {c: np.sum(target_labels == c) for c in classes}
    held_out_counts = {c: np.sum(held_out_labels == c) for c in classes}
    weights = np.array([target_counts[c] / held_out_counts[c] for c in held_out_labels])
    weights *= len(held_out_labels) / weights.sum()
    membership = np.concatenate([np.ones(len(target_labels)), np.zeros(len(held_out_labels))])
    return float(roc_auc_score(membership, scores, sample_weight=np.concatenate([np.ones(len(target_labels)), weights])))


def feature_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    forget_features: np.ndarray,
    forget_labels: np.ndarray,
    max_samples: int = 3000,
    seed: int = 0,
) -> float | None:
    """Recall of the forget classes by a linear probe: a multinomial logistic regression (features standardised)
    fitted on `train_features` / `train_labels` (training rows of every class, forget classes included; at most
    `max_samples`, drawn evenly over the classes, seeded), then the share of `forget_features` (held-out rows of the
    forget classes) it assigns to their own class `forget_labels`. None without rows to fit or score.

    The fit weighs every class equally (`class_weight="balanced"`) whatever its row count: with 100 classes, all
    500 training rows of a forget class beside 20 sampled rows of each other class would otherwise teach the probe a
    25-fold prior for the forget class, and its recall would say little about the features."""
    if not len(forget_labels) or len(np.unique(train_labels)) < 2:
        return None
    if len(train_labels) > max_samples:
        rng = np.random.default_rng(seed)
        classes = np.unique(train_labels)
        per_class = max(1, max_samples // len(classes))
        keep = np.concatenate([
            rng.permutation(np.flatnonzero(train_labels == c))[:per_class] for c in classes
        ])  # fmt: skip
        train_features, train_labels = train_features[keep], train_labels[keep]
    scaler = StandardScaler().fit(train_features)
    probe = LogisticRegression(max_iter=500, C=1.0, class_weight="balanced")
    probe.fit(scaler.transform(train_features), train_labels)
    return float(np.mean(probe.predict(scaler.transform(forget_features)) == forget_labels))


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of several `(logits, labels)` parts as one; parts without rows are skipped (their logits may have
    no class dimension)."""
    present = [part for part in parts if len(part[1])] or parts[:1]
    return np.concatenate([part[0] for part in present]), np.concatenate([part[1] for part in present])


def unlearning_metrics(
    *,
    forget_train: tuple[np.ndarray, np.ndarray],
    retain_train: tuple[np.ndarray, np.ndarray],
    eval_forget: tuple[np.ndarray, np.ndarray],
    eval_retain: tuple[np.ndarray, np.ndarray],
    class_level: bool,
    eval_unlearned_before: tuple[np.ndarray, np.ndarray] | None = None,
    id2label: dict | None = None,
    seed: int = 0,
    features: dict[str, np.ndarray] | None = None,
) -> dict:
    """All metrics from `(logits, labels)` pairs of the four parts of the train and eval splits (and of the eval rows
    of classes unlearned in earlier requests, which only count in `per_class_accuracy` and
    `unlearned_before_accuracy`). `features`: the head inputs of the same rows by part name (`forget_train`,
    `retain_train`, `eval_forget`), for `feature_probe` (class-level requests)."""
    parts = {"forget_train": forget_train, "retain_train": retain_train, "eval_forget": eval_forget,
             "eval_retain": eval_retain}  # fmt: skip
    for name, (logits, _) in parts.items():
        if len(logits) and not np.isfinite(logits).all():  # argmax would call a NaN row class 0
            raise ValueError(f"The model's logits on {name.replace('_', ' ')} rows are not finite: the model has "
                             "diverged (a learning rate too high, or too many steps); nothing can be measured.")
    probs = {name: (softmax(part[0]) if len(part[1]) else np.zeros((0, 1)), part[1]) for name, part in parts.items()}
    eval_rows = _joined([eval_forget, eval_retain])
    earlier = [] if eval_unlearned_before is None else [eval_unlearned_before]
    every_eval_row = _joined([eval_forget, eval_retain, *earlier])
    forget_train_accuracy = accuracy(*forget_train)
    metrics = {
        # rows (sample-level requests): the eval split holds none of them; their accuracy is forget_train_accuracy
        "forget_accuracy": accuracy(*eval_forget) if class_level else None,
        "retain_accuracy": accuracy(*eval_retain),
        "test_accuracy": accuracy(*eval_rows),
        "forget_train_accuracy": forget_train_accuracy,
        "retain_train_accuracy": accuracy(*retain_train),
        "per_class_accuracy": per_class_accuracy(*every_eval_row, id2label) if len(every_eval_row[1]) else {},
        "mia_entropy": mia_entropy(
            probs["retain_train"][0], probs["eval_retain"][0], probs["forget_train"][0], seed=seed
        ),
        "mia_efficacy": mia_efficacy(*probs["retain_train"], *probs["eval_retain"], *probs["forget_train"], seed=seed),
        "mia_entropy_power": attack_power(probs["retain_train"][0], probs["eval_retain"][0]),
    }
    worst = worst_class_accuracy(*forget_train) if class_level else None
    if worst is not None:
        metrics["forget_train_worst_class_accuracy"] = worst
    if eval_unlearned_before is not None:
        metrics["unlearned_before_accuracy"] = accuracy(*eval_unlearned_before)
    if not class_level:
        metrics["mia_auc"] = mia_auc(*probs["forget_train"], *probs["eval_retain"])
    elif features is not None:
        metrics["feature_probe"] = feature_probe(
            np.concatenate([features["forget_train"], features["retain_train"]]),
            np.concatenate([forget_train[1], retain_train[1]]),
            features["eval_forget"],
            eval_forget[1],
            seed=seed,
        )
    # Metrics registered with their own `compute` (hf_unlearn.metric_registry), from the same rows.
    parts = {"forget_train": forget_train, "retain_train": retain_train, "eval_forget": eval_forget,
             "eval_retain": eval_retain}  # fmt: skip
    metrics.update(computed_metrics("classifier", parts, class_level))
    return metrics


def gap_to_reference(metrics: dict, reference: dict) -> dict:
    """`gap_<name>` = |metric - reference metric| for every scalar metric both have, `reference_<name>` for the
    reference values, and `mean_gap` over the metrics registered `in_mean_gap` (forget/retain/test accuracy and the
    entropy MIA, as SFR-on averages them). Smaller is closer to the retrained model."""
    result = {}
    for name in scalar_metric_keys():
        if metrics.get(name) is None or reference.get(name) is None:
            continue
        result[f"reference_{name}"] = reference[name]
        result[f"gap_{name}"] = abs(metrics[name] - reference[name])
    for name in ("per_class_accuracy", "class_shares"):  # the reference's per-class values, for reports and cards
        if reference.get(name) is not None:
            result[f"reference_{name}"] = reference[name]
    gaps = [result[f"gap_{name}"] for name in mean_gap_keys() if f"gap_{name}" in result]
    result["mean_gap"] = float(np.mean(gaps)) if gaps else None
    return result


# ------------------------------------------------------------------------------------------------ generators
def frechet_distance(features: np.ndarray, reference: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets `(n, d)`: |mu_a - mu_b|^2 +
    tr(C_a + C_b - 2 (C_a C_b)^(1/2)) (the FID formula of Heusel et al., NeurIPS 2017, here in any feature space).
    The trace of the matrix square root is taken from the eigenvalues of C_a^(1/2) C_b C_a^(1/2), which are real and
    non-negative, so no complex square root is needed."""
    features, reference = np.asarray(features, np.float64), np.asarray(reference, np.float64)
    if len(features) < 2 or len(reference) < 2:
        raise ValueError(
            f"A Frechet distance needs at least 2 rows per side; got {len(features)} and {len(reference)}."
        )
    mean_gap = features.mean(0) - reference.mean(0)
    cov_a, cov_b = np.cov(features, rowvar=False), np.cov(reference, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(mean_gap @ mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def attack_auc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float | None:
    """ROC AUC of a score separating members (higher expected) from non-members; 0.5 = indistinguishable."""
    if len(member_scores) == 0 or len(non_member_scores) == 0:
        return None
    membership = np.concatenate([np.ones(len(member_scores)), np.zeros(len(non_member_scores))])
    return float(roc_auc_score(membership, np.concatenate([member_scores, non_member_scores])))


def generative_metrics(
    *,
    forget_classes: list[int] | None,
    forget_logits: np.ndarray | None,
    retain_logits: np.ndarray,
    retain_sample_labels: np.ndarray | None,
    retain_sample_features: np.ndarray,
    real_retain_features: np.ndarray,
    forget_scores: np.ndarray | None = None,
    held_out_scores: np.ndarray | None = None,
    generated_scores: np.ndarray | None = None,
    id2label: dict | None = None,
) -> dict:
    """Metrics of a generator (table above) from the judge's logits and features on generated samples and the
    discriminator's probabilities ("real") on real and generated rows (GANs; a diffusion model has no discriminator:
    leave them None).

    Unconditional generators: `forget_logits` is None and `retain_logits` holds every sample; conditional ones:
    `forget_logits` are the samples generated for the forget classes, `retain_logits` those generated for the
    retained classes `retain_sample_labels`. `forget_classes` is None for item unlearning (no share is measured)."""
    predicted = retain_logits.argmax(-1)
    num_classes = retain_logits.shape[-1]
    metrics = {
        "class_shares": {class_name(id2label, c): float((predicted == c).mean()) for c in range(num_classes)},
        "frechet_distance": frechet_distance(retain_sample_features, real_retain_features),
    }
    if forget_scores is not None:
        metrics.update(
            discriminator_attack_auc=attack_auc(forget_scores, held_out_scores),
            forget_discriminator_score=float(forget_scores.mean()) if len(forget_scores) else None,
            generated_discriminator_score=float(generated_scores.mean()),
        )
    if forget_classes:
        judged = forget_logits.argmax(-1) if forget_logits is not None else predicted
        metrics["forget_share"] = float(np.isin(judged, forget_classes).mean())
    if retain_sample_labels is not None:
        metrics["retain_judge_accuracy"] = float((predicted == retain_sample_labels).mean())
    return metrics
