"""`svd_projection`: the projection removes forget-only input directions and keeps the retain space, on its own and
through the trainer on a model; the alpha search is reported and picks its best point; several classes at once."""

import copy

import datasets
import numpy as np
import pytest
import torch

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.examples.digits import digits_classifier
from hf_unlearn.methods.svd_projection import (
    LayerProjection,
    best_grid_point,
    cross_fitted_refit_accuracy,
    eigen_space,
    scaled_importance,
)

ALPHA = 1e4  # large: every direction with a real share of the energy counts fully


def gram_of(rows):
    return (rows.T @ rows).unsqueeze(0)


def orthonormal(dimension, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(dimension, count, generator=generator))[0].T  # rows are orthonormal


def test_scaled_importance_follows_the_paper():
    importance = torch.tensor([0.5, 0.3, 0.2])
    assert torch.equal(scaled_importance(importance, 1.0), importance)
    torch.testing.assert_close(scaled_importance(importance, 3.0), 3 * importance / (2 * importance + 1))
    assert scaled_importance(importance, 1e9).min() > 0.999


def test_forget_only_directions_are_removed_and_the_retain_space_kept():
    """Retain inputs span {a, b}, forget inputs span {b, c}: c is forget-only and goes, a and b (shared) stay, and a
    direction neither split uses is untouched."""
    a, b, c, unused = orthonormal(6, 4)
    generator = torch.Generator().manual_seed(1)
    coefficients = torch.randn(50, 2, generator=generator)
    retain = coefficients[:, :1] * a + coefficients[:, 1:] * b
    forget = coefficients[:, :1] * b + coefficients[:, 1:] * c
    weight = torch.randn(3, 6, generator=generator)
    projection = LayerProjection(weight, eigen_space(gram_of(retain)), eigen_space(gram_of(forget)))
    new = projection.weight_for(projection.kept_on_forget(ALPHA), ALPHA)
    assert (new @ c).norm() < 1e-3 * (weight @ c).norm()
    for kept in (a, b, unused):
        torch.testing.assert_close(new @ kept, weight @ kept, atol=1e-3, rtol=1e-3)
    assert torch.equal(projection.weight, weight)  # the original is kept for other grid points


@pytest.mark.parametrize("retain_rank, forget_rank", [(None, None), (3, None), (None, 2), (3, 2)])
def test_the_projected_weight_is_the_papers_formula(retain_rank, forget_rank):
    """W (I - (I - M_r) M_f) with M = U diag(lambda) U^T formed explicitly in float64, for every (alpha_r, alpha_f)
    and for full or partial eigenspaces (`row_eigen`'s k < d columns), 2 groups: `LayerProjection` regroups the
    products (W U_f - W U_r diag(lambda_r) U_r^T U_f) and must give the same weight."""
    generator = torch.Generator().manual_seed(3)
    size, groups = 6, 2

    def space(rank):
        rows = torch.randn(groups, rank or 3 * size, size, generator=generator)
        return eigen_space(rows, rows=True) if rank else eigen_space(rows.transpose(-1, -2) @ rows)

    retain, forget = space(retain_rank), space(forget_rank)
    weight = torch.randn(groups * 4, 1, size, generator=generator)  # 4 outputs per group, d = 6
    projection = LayerProjection(weight, retain, forget)
    for alpha_r in (1.0, 30.0):
        kept = projection.kept_on_forget(alpha_r)
        for alpha_f in (3.0, 100.0):
            matrices = [(vectors.double() * scaled_importance(importance, alpha).double().unsqueeze(-2))
                        @ vectors.double().transpose(-1, -2)
                        for (importance, vectors), alpha in ((retain, alpha_r), (forget, alpha_f))]  # fmt: skip
            identity = torch.eye(size, dtype=torch.float64)
            blocks = weight.double().reshape(groups, 4, size)
            expected = blocks @ (identity - (identity - matrices[0]) @ matrices[1])
            torch.testing.assert_close(projection.weight_for(kept, alpha_f).reshape(groups, 4, size).double(),
                                       expected, atol=1e-5, rtol=1e-4)  # fmt: skip


def test_grouped_weights_are_projected_per_group():
    """A depthwise-like layer: group 0 has a forget-only direction, group 1 has none and must not change."""
    a, b = orthonormal(4, 2)
    retain = torch.stack([gram_of(torch.outer(torch.arange(1.0, 9.0), a))[0], torch.eye(4)])
    forget = torch.stack([gram_of(torch.outer(torch.arange(1.0, 9.0), b))[0], torch.eye(4)])
    weight = torch.randn(2, 1, 2, 2)  # 2 groups, 1 output each, 1 input channel, 2 x 2 kernel (d = 4)
    projection = LayerProjection(weight, eigen_space(retain), eigen_space(forget))
    new = projection.weight_for(projection.kept_on_forget(ALPHA), ALPHA).reshape(2, 4)
    flat = weight.reshape(2, 4)
    assert (new[0] @ b).abs() < 1e-3 * flat[0].norm()
    torch.testing.assert_close(new[0] @ a, flat[0] @ a, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(new[1], flat[1], atol=1e-3, rtol=1e-3)


def _patch_images(coefficients, basis):
    """16 x 16 one-channel images whose every 4 x 4 patch is `coefficients @ basis` (the ViT's patch inputs)."""
    patches = torch.einsum("npk,kd->npd", coefficients, basis)  # (images, 16 patches, 16 pixels)
    grid = patches.reshape(-1, 4, 4, 4, 4)  # (image, patch row, patch col, pixel row, pixel col)
    return grid.permute(0, 1, 3, 2, 4).reshape(-1, 1, 16, 16)


def test_projection_through_the_trainer_on_a_tiny_vit(tmp_path):
    """End to end on a model (hooks, im2col of the patch embedding with the paper's crop, one eigendecomposition,
    folded weights): the patch-embedding weight sends the forget-only pixel direction to zero and keeps the others."""
    a, b, c, unused = orthonormal(16, 4, seed=2)
    generator = torch.Generator().manual_seed(3)
    retain_labels = [label for label in range(10) if label != 3] * 10
    retain = _patch_images(torch.randn(len(retain_labels), 16, 2, generator=generator), torch.stack([a, b]))
    forget = _patch_images(torch.randn(20, 16, 2, generator=generator), torch.stack([b, c]))
    features = datasets.Features(
        {"pixel_values": datasets.Array3D((1, 16, 16), "float32"), "label": datasets.ClassLabel(num_classes=10)}
    )
    train = datasets.Dataset.from_dict(
        {"pixel_values": torch.cat([retain, forget]).numpy(), "label": retain_labels + [3] * 20}, features=features
    )
    model = digits_classifier("vit")
    weight = model.vit.embeddings.patch_embeddings.projection.weight.detach().reshape(32, 16).clone()
    args = UnlearnConfig(
        output_dir=str(tmp_path),
        method="svd_projection",
        method_kwargs={"alpha_search": False, "alpha_r": ALPHA, "alpha_f": ALPHA},
        eval_before_unlearn=False,
        eval_after_unlearn=False,
        disable_tqdm=True,
        report_to="none",
    )
    result = UnlearningTrainer(model, args, train_dataset=train, forget_classes=[3]).unlearn()
    new = result.model.vit.embeddings.patch_embeddings.projection.weight.detach().reshape(32, 16)
    assert (new @ c).norm() < 1e-2 * (weight @ c).norm()
    for kept in (a, b, unused):
        torch.testing.assert_close(new @ kept, weight @ kept, atol=1e-3, rtol=1e-2)
    assert result.metrics["projected_layers"] == 14  # patch embedding, 2 x (q, k, v, o, fc1, fc2), head
    assert result.metrics["alpha_r"] == ALPHA and "alpha_grid" not in result.metrics


def _unlearn(model, digits, make_args, forget_classes, **method_kwargs):
    args = make_args("svd_projection", method_kwargs={"num_samples": 300, **method_kwargs})
    trainer = UnlearningTrainer(
        model, args, train_dataset=digits["train"], eval_dataset=digits["test"], forget_classes=forget_classes
    )
    return trainer, trainer.unlearn()


def test_alpha_search_reports_the_grid_and_keeps_its_best_point(trained, digits, make_args):
    grid = {"alpha_r_grid": [10.0, 100.0], "alpha_f_grid": [1.0, 10.0]}
    trainer, result = _unlearn(trained("resnet"), digits, make_args, [3], **grid)
    metrics = result.metrics
    assert [(point["alpha_r"], point["alpha_f"]) for point in metrics["alpha_grid"]] == [
        (10.0, 1.0),
        (10.0, 10.0),
        (100.0, 1.0),
        (100.0, 10.0),
    ]
    points = metrics["alpha_grid"]
    forgotten = [point for point in points if point["forget_accuracy"] == 0.0]
    assert forgotten  # on digits some grid point forgets every held-out row
    # Neither a point past the forget target nor one that lost more retain rows than a point before it can be kept:
    # their passes stopped early. Every other point at the target has its retain accuracy and score.
    assert all(point.get("stopped") == "forget" and point["retain_accuracy"] is None and point["score"] is None
               for point in points if point not in forgotten)  # fmt: skip
    outscored = [point for point in forgotten if point.get("stopped") == "retain"]
    scored = [point for point in forgotten if point not in outscored]
    assert scored and all(point["retain_accuracy"] is None and point["score"] is None for point in outscored)
    best = max(scored, key=lambda point: point["retain_accuracy"])  # the default rule, "forget_first"
    assert (metrics["alpha_r"], metrics["alpha_f"]) == (best["alpha_r"], best["alpha_f"])
    assert metrics["refit_head"] == "classifier.1"
    for point in scored:
        assert point["score"] == pytest.approx(point["retain_accuracy"] * (1 - point["forget_accuracy"]))
    assert metrics["retain_scored_points"] == len(forgotten)
    assert metrics["stopped_points"] == len(points) - len(scored)
    # Held-out rows (taken from the training rows, never the eval set) are disjoint from the statistics rows.
    rows = trainer.method.split_rows()
    forget_rows = len(trainer.forget_view)
    assert [len(part) for part in rows["forget"]] == [forget_rows - round(0.2 * forget_rows), round(0.2 * forget_rows)]
    assert [len(part) for part in rows["retain"]] == [300, round(0.2 * len(trainer.retain_view))]
    for statistics, held_out in rows.values():
        assert not set(statistics) & set(held_out)
    retain_labels = np.asarray(trainer.retain_view["label"])[rows["retain"][0]]
    assert np.bincount(retain_labels, minlength=10).max() - np.bincount(retain_labels)[retain_labels].min() <= 1
    assert metrics["statistics_rows"] == {"forget": len(rows["forget"][0]), "retain": 300}
    assert metrics["forget_accuracy"] <= 0.05
    assert metrics["retain_accuracy"] >= result.original_metrics["retain_accuracy"] - 0.03


@pytest.mark.parametrize("grid", [
    {"alpha_r_grid": [10.0, 100.0], "alpha_f_grid": [1.0, 10.0]},
    {"alpha_r_grid": [100.0, 10.0], "alpha_f_grid": [10.0, 3.0, 1.0]},  # the best point after weaker ones
])  # fmt: skip
def test_scoring_only_the_points_that_can_be_kept_keeps_the_same_point(grid, trained, digits, make_args):
    """`full_grid=False` (default) skips the retain rows of points above the forget target and stops the passes that
    cannot be kept early (past the forget target; more wrong retain rows than a point before); with `full_grid=True`
    every point is scored in full, and the point kept, the weights and the scores of the points scored both ways
    agree. When no point reaches the target, those with the lowest forget accuracy are scored and the best of them is
    kept."""
    _, full = _unlearn(trained("resnet"), digits, make_args, [3], full_grid=True, **grid)
    _, lean = _unlearn(trained("resnet"), digits, make_args, [3], **grid)
    points = len(grid["alpha_r_grid"]) * len(grid["alpha_f_grid"])
    assert full.metrics["retain_scored_points"] == points > lean.metrics["retain_scored_points"] >= 1
    assert full.metrics["stopped_points"] == 0 < lean.metrics["stopped_points"]
    assert (lean.metrics["alpha_r"], lean.metrics["alpha_f"]) == (full.metrics["alpha_r"], full.metrics["alpha_f"])
    kept = next(point for point in full.metrics["alpha_grid"]
                if (point["alpha_r"], point["alpha_f"]) == (full.metrics["alpha_r"], full.metrics["alpha_f"]))  # fmt: skip
    for point_lean, point_full in zip(lean.metrics["alpha_grid"], full.metrics["alpha_grid"], strict=True):
        if point_lean.get("stopped") == "forget":  # it was past the target
            assert point_lean["forget_accuracy"] is None and point_full["forget_accuracy"] > 0.0
        else:
            assert point_lean["forget_accuracy"] == point_full["forget_accuracy"]
        if point_lean.get("stopped") == "retain":  # it could not beat a point before it
            assert point_lean["retain_accuracy"] is None and point_full["retain_accuracy"] <= kept["retain_accuracy"]
        else:
            assert point_lean["retain_accuracy"] in (None, point_full["retain_accuracy"])
    for name, weight in full.model.state_dict().items():
        torch.testing.assert_close(lean.model.state_dict()[name], weight)
    # A weak grid where no point forgets: the points of the lowest forget accuracy are scored, the best one kept.
    _, weak = _unlearn(trained("resnet"), digits, make_args, [3], alpha_r_grid=[1000.0], alpha_f_grid=[1.0, 1.5])
    points = weak.metrics["alpha_grid"]
    lowest = min(point["forget_accuracy"] for point in points)
    assert lowest > 0.0  # the premise
    scored = [point for point in points if point["retain_accuracy"] is not None]
    assert scored == [point for point in points if point["forget_accuracy"] == lowest]
    best = max(scored, key=lambda point: point["retain_accuracy"])
    assert (weak.metrics["alpha_r"], weak.metrics["alpha_f"]) == (best["alpha_r"], best["alpha_f"])


def test_the_kl_score_keeps_the_point_whose_retain_predictions_moved_least(trained, digits, make_args):
    """`alpha_score="forget_first_kl"` through the trainer: every point scored on the retain rows has its `retain_kl`
    (>= 0), and the point kept is the one of least divergence among those at the forget target."""
    grid = {"alpha_r_grid": [10.0, 100.0], "alpha_f_grid": [1.0, 10.0]}
    _, result = _unlearn(trained("resnet"), digits, make_args, [3], alpha_score="forget_first_kl", **grid)
    scored = [point for point in result.metrics["alpha_grid"] if point["retain_accuracy"] is not None]
    assert scored and all(point["retain_kl"] >= 0.0 for point in scored)
    at_target = [point for point in scored if point["forget_accuracy"] == 0.0] or scored
    best = min(at_target, key=lambda point: point["retain_kl"])
    assert (result.metrics["alpha_r"], result.metrics["alpha_f"]) == (best["alpha_r"], best["alpha_f"])


def test_refining_bisects_alpha_f_where_the_grid_crosses_the_forget_target(trained, digits, make_args):
    """`refine_steps`: at alpha_f 0.01 nothing is removed, at 1000 the class is gone, so every alpha_r crosses the
    target; each is bisected 4 times on a log scale, the weakest point found at the target is scored and reported
    (`refined`), and the point kept is the best of the whole grid."""
    grid = {"alpha_r_grid": [10.0, 100.0], "alpha_f_grid": [0.01, 1000.0], "refine_steps": 4}
    _, result = _unlearn(trained("resnet"), digits, make_args, [3], **grid)
    points = result.metrics["alpha_grid"]
    plain, refined = points[:4], points[4:]
    assert [point["forget_accuracy"] > 0 for point in plain] == [True, False, True, False]
    assert [point["alpha_r"] for point in refined] == [10.0, 100.0] and all(point["refined"] for point in refined)
    for point in refined:
        assert point["forget_accuracy"] == 0.0 and point["retain_accuracy"] is not None
        steps = np.log(point["alpha_f"] / 0.01) / np.log(1000.0 / 0.01) * 16  # 4 halvings: sixteenths of the range
        assert 0 < round(steps) < 16 and steps == pytest.approx(round(steps))
    # kept: the highest held-out retain accuracy among the points at the target (ties: the earlier point)
    at_target = [point for point in points if point["forget_accuracy"] == 0.0]
    best = max(at_target, key=lambda point: point["retain_accuracy"])
    assert (result.metrics["alpha_r"], result.metrics["alpha_f"]) == (best["alpha_r"], best["alpha_f"])


def test_the_grid_point_each_score_keeps():
    grid = [
        {"alpha_r": 10, "retain_accuracy": 0.80, "forget_accuracy": 0.0, "score": 0.80},
        {"alpha_r": 30, "retain_accuracy": 0.90, "forget_accuracy": 0.0, "score": 0.90},
        {"alpha_r": 100, "retain_accuracy": 0.99, "forget_accuracy": 0.05, "score": 0.99 * 0.95},
    ]
    assert best_grid_point(grid, "forget_first", 0.0)["alpha_r"] == 30
    assert best_grid_point(grid, "product", 0.0)["alpha_r"] == 100
    assert best_grid_point(grid, "forget_first", 0.05)["alpha_r"] == 100  # a looser target admits it
    nothing_forgets = [dict(point, forget_accuracy=0.5 - 0.1 * i) for i, point in enumerate(grid)]
    assert best_grid_point(nothing_forgets, "forget_first", 0.0)["alpha_r"] == 100  # the lowest forget accuracy
    # "forget_first_kl": among the points at the target, the retain predictions that moved least, whatever the accuracy.
    moved = [dict(point, retain_kl=kl) for point, kl in zip(grid, [0.1, 0.3, 0.0], strict=True)]
    assert best_grid_point(moved, "forget_first_kl", 0.0)["alpha_r"] == 10
    assert best_grid_point(moved, "forget_first_kl", 0.05)["alpha_r"] == 100


def test_the_divergence_of_retain_predictions_is_the_mean_kl_to_the_reference():
    """`passes.shard_divergence`: 0 for the same model, and the mean over rows of KL(reference || model) otherwise."""
    from accelerate import Accelerator

    from hf_unlearn.passes import shard_divergence, shard_logits

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 3)

        def forward(self, x):
            return type("Output", (), {"logits": self.layer(x)})()

    torch.manual_seed(0)
    model, batches = Logits(), [(torch.arange(5), {"x": torch.randn(5, 4), "labels": torch.zeros(5)}) for _ in range(2)]
    reference = shard_logits(model, batches)
    accelerator = Accelerator(cpu=True)
    assert shard_divergence(model, batches, reference, accelerator) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        model.layer.weight.mul_(3.0)
    p = torch.cat(reference).softmax(-1)
    q = torch.cat(shard_logits(model, batches)).softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean().item()
    assert shard_divergence(model, batches, reference, accelerator) == pytest.approx(expected, rel=1e-5) and expected > 0


def test_scored_after_a_trial_refit_the_grid_keeps_its_best_refitted_point(trained, digits, make_args):
    grid = {"alpha_r_grid": [10.0, 100.0], "alpha_f_grid": [1.0, 10.0], "score_after_refit": True}
    _, result = _unlearn(trained("resnet"), digits, make_args, [3], **grid)
    metrics = result.metrics
    forgotten = [point for point in metrics["alpha_grid"] if point["forget_accuracy"] == 0.0]
    assert all(0.0 <= point["retain_after_refit"] <= 1.0 for point in forgotten)
    best = max(forgotten, key=lambda point: point["retain_after_refit"])
    assert (metrics["alpha_r"], metrics["alpha_f"]) == (best["alpha_r"], best["alpha_f"])


def test_the_retain_accuracy_after_the_refit_decides_where_the_grid_has_it():
    grid = [
        {"alpha_r": 10, "retain_accuracy": 0.80, "retain_after_refit": 0.97, "forget_accuracy": 0.0, "score": 0.80},
        {"alpha_r": 30, "retain_accuracy": 0.90, "retain_after_refit": 0.91, "forget_accuracy": 0.0, "score": 0.90},
        {"alpha_r": 100, "retain_accuracy": 0.99, "retain_after_refit": 0.99, "forget_accuracy": 0.05, "score": 0.94},
    ]
    assert best_grid_point(grid, "forget_first", 0.0)["alpha_r"] == 10
    assert best_grid_point(grid, "product", 0.0)["alpha_r"] == 100  # the product stays the projection's own
    without = [dict(point, retain_after_refit=None) for point in grid]  # no head to refit
    assert best_grid_point(without, "forget_first", 0.0)["alpha_r"] == 30


def test_the_cross_fitted_refit_accuracy_is_measured_on_rows_the_refit_did_not_see():
    """Two classes separated along the first feature: a refitted head scores ~1 on the other half of the rows. With
    labels that are noise, it scores near chance on the other half, though fitting them alone would score higher."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    features = torch.randn(200, 16, generator=generator)
    features[:, 0] += 4.0 * (2 * labels - 1)
    head = torch.nn.Linear(16, 2)
    before = head.weight.detach().clone()
    assert cross_fitted_refit_accuracy(head, features, labels, 100, 1e-2) >= 0.97
    torch.testing.assert_close(head.weight, before)  # trial copies only
    noise = torch.randint(0, 2, (200,), generator=generator)
    assert cross_fitted_refit_accuracy(head, torch.randn(200, 16, generator=generator), noise, 300, 5e-2) < 0.65
    assert cross_fitted_refit_accuracy(head, features[:1], labels[:1], 10, 1e-2) is None


def test_the_head_refit_recovers_retain_accuracy_the_projection_cost(trained, digits, make_args):
    """Same projection with and without the refit (the paper's method is `head_refit_steps=0`): the refit changes only
    the head, and only upwards in retain accuracy, keeping the class forgotten."""
    model = trained("vit")
    _, paper = _unlearn(model, digits, make_args, [3], head_refit_steps=0, alpha_score="product")
    _, refit = _unlearn(model, digits, make_args, [3], alpha_score="product")
    assert (paper.metrics["alpha_r"], paper.metrics["alpha_f"]) == (refit.metrics["alpha_r"], refit.metrics["alpha_f"])
    paper_weights, refit_weights = paper.model.state_dict(), refit.model.state_dict()
    changed = {name for name in paper_weights if not torch.equal(paper_weights[name], refit_weights[name])}
    assert changed == {"classifier.weight", "classifier.bias"}
    assert refit.metrics["retain_accuracy"] >= paper.metrics["retain_accuracy"]
    assert refit.metrics["forget_accuracy"] <= 0.05


def test_the_refit_can_leave_the_forget_classes_rows_of_the_head_alone():
    """`keep_rows`: the rows named keep their weight and bias exactly while the others are fitted; without it the row
    of a class absent from the labels is pushed around by the cross-entropy."""
    from hf_unlearn.models import refit_head

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3  # class 3 of 4 has no rows
    features = torch.randn(300, 8, generator=generator)
    features[torch.arange(300), labels] += 3.0
    original = torch.nn.Linear(8, 4)
    kept, free = copy.deepcopy(original), copy.deepcopy(original)
    refit_head(kept, features, labels, 50, 5e-2, weight_decay=0.1, keep_rows=[3])
    refit_head(free, features, labels, 50, 5e-2, weight_decay=0.1)
    torch.testing.assert_close(kept.weight[3], original.weight[3], rtol=0, atol=0)
    torch.testing.assert_close(kept.bias[3], original.bias[3], rtol=0, atol=0)
    assert not torch.allclose(free.weight[3], original.weight[3])
    assert not torch.allclose(kept.weight[:3], original.weight[:3])
    with torch.no_grad():
        assert (kept(features).argmax(-1) == labels).float().mean() >= 0.95


def test_the_refit_keeps_the_forget_rows_of_the_head_when_asked(trained, digits, make_args):
    """`refit_keeps_forget_rows=True`: the same projection (same alphas); the head's forget-class row is the projected
    one, untouched by the refit, while the retained classes' rows are refitted."""
    from hf_unlearn.models import classification_head

    runs = [
        _unlearn(trained("vit"), digits, make_args, [3], alpha_score="product", **settings)[1]
        for settings in ({}, {"refit_keeps_forget_rows": True}, {"head_refit_steps": 0})
    ]
    assert len({(run.metrics["alpha_r"], run.metrics["alpha_f"]) for run in runs}) == 1
    moved, kept, _ = runs
    heads = [classification_head(run.model)[1] for run in runs]
    torch.testing.assert_close(heads[1].weight[3], heads[2].weight[3], rtol=0, atol=0)
    torch.testing.assert_close(heads[1].bias[3], heads[2].bias[3], rtol=0, atol=0)
    assert not torch.equal(heads[0].weight[3], heads[2].weight[3])
    assert not torch.equal(heads[1].weight[:3], heads[2].weight[:3])
    assert kept.metrics["forget_accuracy"] <= 0.05


@pytest.fixture
def token_layer_rows(monkeypatch):
    """`{"Statistics (retain)": rows, "Statistics (forget)": rows}` of one token layer (a query projection), filled
    by each statistics pass of svd_projection while the test runs."""
    from hf_unlearn.methods import svd_projection

    recorded = {}
    collect = svd_projection.collect_input_grams

    def recording(*args, **kwargs):
        statistics = collect(*args, **kwargs)
        query = next(name for name in statistics.rows if name.endswith(("query", "q_proj")))
        recorded[args[4]] = statistics.rows[query]
        return statistics

    monkeypatch.setattr(svd_projection, "collect_input_grams", recording)
    return recorded


def test_token_rows_choose_each_spaces_rows(trained, digits, make_args, token_layer_rows):
    """`token_rows="forget_mean"`: the retain statistics keep every token, the forget statistics one mean token per
    sample, so the forget Gram of a token layer counts samples, the retain Gram tokens."""
    _, result = _unlearn(trained("vit"), digits, make_args, [3], alpha_search=False, token_rows="forget_mean")
    rows = result.metrics["statistics_rows"]
    assert token_layer_rows["Statistics (forget)"] == rows["forget"]
    tokens, remainder = divmod(token_layer_rows["Statistics (retain)"], rows["retain"])
    assert remainder == 0 and tokens > 1


def test_max_token_rows_bounds_each_token_layers_statistics(trained, digits, make_args, token_layer_rows):
    """`max_token_rows`: a token layer's statistics take ceil(max_token_rows / samples) tokens of each sample."""
    _, result = _unlearn(trained("vit"), digits, make_args, [3], alpha_search=False, max_token_rows=100)
    for split, samples in result.metrics["statistics_rows"].items():
        assert token_layer_rows[f"Statistics ({split})"] == samples * -(-100 // samples)


def test_several_classes_are_forgotten_at_once(trained, digits, make_args):
    _, result = _unlearn(trained("resnet"), digits, make_args, [3, 7])
    per_class = result.metrics["per_class_accuracy"]
    assert per_class["three"] <= 0.1 and per_class["seven"] <= 0.1  # from 1.0 each
    kept = [per_class[name] for name in per_class if name not in ("three", "seven")]
    assert np.mean(kept) >= 0.9


def test_sample_level_requests_are_refused(trained, digits, make_args):
    with pytest.raises(ValueError, match="forget_classes"):
        UnlearningTrainer(
            trained("resnet"),
            make_args("svd_projection"),
            train_dataset=digits["train"],
            eval_dataset=digits["test"],
            forget_indices=[0, 1, 2],
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha_f": 0}, "alpha_f"),
        ({"alpha_r_grid": []}, "alpha_r_grid"),
        ({"search_fraction": 1.0}, "search_fraction"),
        ({"num_samples": 0}, "num_samples"),
        ({"conv_window": 0}, "conv_window"),
        ({"token_rows": "cls"}, "token_rows"),
    ],
)
def test_bad_method_kwargs_are_named(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        UnlearnConfig(output_dir=str(tmp_path), method="svd_projection", method_kwargs=kwargs)


@pytest.mark.parametrize("how", ["raises", "returns NaN"])
@pytest.mark.parametrize(("dtype", "failures"), [(torch.float64, 0), (torch.float64, 1), (torch.float64, 2),
                                                 (torch.float32, 2), (torch.float32, 3)])  # fmt: skip
def test_the_eigendecomposition_survives_eigh_failing(dtype, failures, how, monkeypatch):
    """`eigh` failing to converge (as LAPACK does on a Gram matrix whose rows are mostly exactly zero), or returning
    NaN without raising (as float32 LAPACK did on a rank-deficient conv Gram matrix of the textures ResNet), is
    retried with a jitter, then in float64, then replaced by an SVD: the same eigenvalues and eigenspace, in the
    dtype asked for, either way."""
    from hf_unlearn.methods.svd_projection import symmetric_eigen

    generator = torch.Generator().manual_seed(0)
    inputs = torch.zeros(64, 12, dtype=torch.float64)
    inputs[:, :3] = torch.randn(64, 3, generator=generator, dtype=torch.float64)  # 9 of 12 rows exactly zero
    gram = inputs.T @ inputs
    expected_values, _ = torch.linalg.eigh(gram)
    real_eigh, calls = torch.linalg.eigh, []

    def failing_eigh(matrix):
        calls.append(1)
        if len(calls) <= failures:
            if how == "raises":
                raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
            values, vectors = real_eigh(matrix)
            return values, torch.full_like(vectors, float("nan"))
        return real_eigh(matrix)

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    values, vectors = symmetric_eigen(gram, dtype)
    assert values.dtype == vectors.dtype == dtype
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4 * float(expected_values.max())
    torch.testing.assert_close(values.double(), expected_values, atol=tolerance, rtol=0)
    torch.testing.assert_close((vectors @ torch.diag(values) @ vectors.T).double(), gram, atol=tolerance, rtol=0)
    assert len(calls) == min(failures + 1, 2 if dtype == torch.float64 else 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rows_give_the_eigenspace_of_their_gram_matrix(dtype):
    """`keep_rows`: a layer decomposed from its n < d input rows (QR, then an n x n eigenproblem) is projected as
    from its d x d Gram matrix, grouped layers included; the Gram matrix's zero eigenvalues are left out."""
    from hf_unlearn.methods.svd_projection import row_eigen

    generator = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -3, 64, dtype=torch.float64)
    retain = torch.randn(2, 30, 64, generator=generator, dtype=torch.float64) * scales  # 2 groups, 30 rows of 64
    forget = torch.randn(2, 12, 64, generator=generator, dtype=torch.float64) * scales.flip(0)
    weight = torch.randn(6, 1, 8, 8, generator=generator, dtype=torch.float64)  # 2 groups of 3 outputs, d = 64
    values, vectors = row_eigen(forget, dtype)
    assert values.shape == (2, 12) and vectors.shape == (2, 64, 12)
    torch.testing.assert_close((vectors * values.unsqueeze(-2)) @ vectors.transpose(-1, -2),
                               (forget.transpose(-1, -2) @ forget).to(dtype))  # fmt: skip
    projected = {}
    for kept in (False, True):
        spaces = [eigen_space(rows if kept else rows.transpose(-1, -2) @ rows, dtype, rows=kept)
                  for rows in (retain, forget)]  # fmt: skip
        layer = LayerProjection(weight.float(), *spaces)
        projected[kept] = layer.weight_for(layer.kept_on_forget(100.0), 10.0).double()
    changed = (projected[False] - weight).norm()
    assert changed > 0.05 * weight.norm()
    assert (projected[True] - projected[False]).norm() < 1e-4 * changed
    with pytest.raises(TypeError, match="`retain` must be an `\\(importance, vectors\\)` pair"):
        LayerProjection(weight, retain.transpose(-1, -2) @ retain, spaces[1])  # a Gram matrix, not its space
    bad = forget.clone()
    bad[0, 3, 5] = float("nan")
    with pytest.raises(RuntimeError, match="12 input rows of size 64 hold NaN"):
        row_eigen(bad, dtype)


def test_keeping_rows_leaves_svd_projection_unchanged(trained, digits, make_args, monkeypatch):
    """The digits ViT through the trainer with and without `keep_rows`: the same accuracies, and projected weights
    that differ by rounding only (3 samples: its MLP output layers and head keep their rows)."""
    from hf_unlearn.methods import svd_projection

    kept, collect = [], svd_projection.collect_input_grams

    def recording(*args, **kwargs):
        statistics = collect(*args, **kwargs)
        kept.extend(name for name in statistics.rows if statistics.kept_rows(name) is not None)
        return statistics

    monkeypatch.setattr(svd_projection, "collect_input_grams", recording)
    model = trained("vit")
    runs = {keep: _unlearn(copy.deepcopy(model), digits, make_args, [3], alpha_search=False, num_samples=3,
                           keep_rows=keep) for keep in (0.0, 0.9)}  # fmt: skip
    assert any(name.endswith("fc2") for name in kept) and "classifier" in kept, kept
    for name in ("forget_accuracy", "retain_accuracy"):
        assert runs[0.0][1].metrics[name] == runs[0.9][1].metrics[name]
    weights = [dict(runs[keep][0].model.named_parameters()) for keep in (0.0, 0.9)]
    original = dict(model.named_parameters())
    for name, value in weights[0].items():
        changed = (value - original[name]).norm()
        assert (weights[1][name] - value).norm() <= 1e-3 * changed + 1e-6, name


def test_a_gram_matrix_with_nan_is_refused_clearly():
    from hf_unlearn.methods.svd_projection import symmetric_eigen

    gram = torch.eye(4, dtype=torch.float64)
    gram[1, 2] = float("nan")
    with pytest.raises(RuntimeError, match="4 x 4 Gram matrix holds NaN or infinite values"):
        symmetric_eigen(gram, torch.float32)


def test_float32_eigendecompositions_give_the_float64_projection():
    """`eigen_dtype="float32"` on a rank-deficient Gram matrix (most input rows exactly zero, as a conv at 1x1 spatial
    size gives): the projected weight matches float64's to 1e-4 of what the projection changed."""
    generator = torch.Generator().manual_seed(0)
    retain_inputs, forget_inputs = torch.zeros(200, 48), torch.zeros(60, 48)
    retain_inputs[:, :10] = torch.randn(200, 10, generator=generator)
    forget_inputs[:, 5:14] = torch.randn(60, 9, generator=generator)
    weight = torch.randn(16, 48, generator=generator)
    grams = (gram_of(retain_inputs), gram_of(forget_inputs))
    projected = {}
    for dtype in (torch.float64, torch.float32):
        layer = LayerProjection(weight, *(eigen_space(gram, dtype) for gram in grams))
        projected[dtype] = layer.weight_for(layer.kept_on_forget(100.0), 3.0)
    changed = (projected[torch.float64] - weight).norm()
    assert changed > 0.05 * weight.norm()  # the forget-only inputs 10-13 were removed
    assert (projected[torch.float32] - projected[torch.float64]).norm() < 1e-4 * changed


def test_an_error_midway_puts_the_original_weights_back(trained, digits, make_args, monkeypatch):
    """The grid and the projection rewrite the weights in place: an error after them (here in the head refit) must
    not leave the caller's model at some grid point."""
    import hf_unlearn.methods.svd_projection as svd

    model = trained("resnet")
    before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    def failing(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(svd, "refit_head", failing)
    trainer = UnlearningTrainer(model, make_args("svd_projection"), train_dataset=digits["train"],
                                eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip
    with pytest.raises(RuntimeError, match="simulated"):
        trainer.unlearn()
    after = trainer.model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())
