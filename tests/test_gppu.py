"""`gppu`: the batched k-NN graph is the exact one; the forget directions point where the forget class stands out;
the head stops seeing them; fine-tuning touches only the chosen blocks and the head; requests compose; several
classes at once; the tail is found on every family."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import FAMILIES, tiny_classifier

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.methods.gppu import GPPUConfig, forget_directions, knn_graph, propagate
from hf_unlearn.models import classification_head, model_tail


def dense_normalised_knn(features, k):
    unit = F.normalize(features, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    neighbours = similarity.topk(k, dim=1).indices
    adjacency = torch.zeros(len(features), len(features))
    adjacency[torch.arange(len(features)).repeat_interleave(k), neighbours.reshape(-1)] = 1.0
    adjacency = torch.maximum(adjacency, adjacency.T) + torch.eye(len(features))
    degree = adjacency.sum(1)
    return adjacency / torch.sqrt(degree[:, None] * degree[None, :])


@pytest.mark.parametrize("batch_size", [7, 50, 1000])
def test_batched_knn_graph_equals_the_dense_one(batch_size):
    torch.manual_seed(0)
    features = torch.randn(50, 6) * torch.rand(50, 1)  # lengths vary: the graph is on cosine similarity
    a_hat = knn_graph(features, 4, batch_size=batch_size)
    assert a_hat.is_sparse and a_hat._nnz() <= 50 * (2 * 4 + 1)
    torch.testing.assert_close(a_hat.to_dense(), dense_normalised_knn(features, 4))


def test_propagation_is_personalised_pagerank():
    torch.manual_seed(0)
    features = torch.randn(30, 5)
    a_hat = knn_graph(features, 3)
    expected = features.clone()
    for _ in range(4):
        expected = 0.8 * a_hat.to_dense() @ expected + 0.2 * features
    torch.testing.assert_close(propagate(a_hat, features, steps=4, teleport=0.2), expected)
    torch.testing.assert_close(propagate(a_hat, features, steps=0, teleport=0.2), features)


def clusters(centres, per_cluster, seed=0):
    generator = torch.Generator().manual_seed(seed)
    points = torch.cat(
        [centre + 0.3 * torch.randn(per_cluster, len(centre), generator=generator) for centre in centres]
    )
    return points, torch.arange(len(centres)).repeat_interleave(per_cluster)


def test_forget_directions_point_where_the_forget_classes_stand_out():
    """Retained classes around shared centres; forget class 7 sits apart along e1, class 8 along e2: G spans exactly
    those offsets (orthonormal), not what the classes share."""
    generator = torch.Generator().manual_seed(1)
    shared = torch.randn(4, 8, generator=generator)
    e1, e2 = torch.eye(8)[6], torch.eye(8)[7]
    shared[:, 6:] = 0.0
    retain, retain_labels = clusters(shared, 40)
    middle = shared.mean(0)
    forget, forget_labels = clusters([middle + 4 * e1, middle + 4 * e2], 30, seed=2)
    features = torch.cat([forget, retain])
    labels = torch.cat([forget_labels + 7, retain_labels])
    is_forget = torch.arange(len(features)) < len(forget)
    config = GPPUConfig()

    both = forget_directions(features, labels, is_forget, config)
    assert both.shape == (8, 2)
    torch.testing.assert_close(both.T @ both, torch.eye(2), atol=1e-5, rtol=0)
    offsets = torch.stack([e1, e2])
    assert torch.linalg.matrix_norm(offsets @ both, ord=2) > 0.98  # the span of G is the span of the offsets
    assert torch.linalg.svdvals(offsets @ both).min() > 0.97

    keep = labels != 8
    one = forget_directions(features[keep], labels[keep], is_forget[keep], config)
    assert one.shape == (8, 1) and abs(float(one[:, 0] @ e1)) > 0.98


def test_the_unique_direction_leaves_the_retained_classes_where_they_were():
    """A forget class offset along e1 and partly along a retained class's own offset: 'contrast' keeps that shared
    part (removing it moves the retained class), 'unique' removes only e1."""
    generator = torch.Generator().manual_seed(1)
    shared = torch.randn(4, 8, generator=generator)
    shared[:, 6:] = 0.0
    e1 = torch.eye(8)[6]
    retain, retain_labels = clusters(shared, 40)
    middle = shared.mean(0)
    forget, forget_labels = clusters([middle + 4 * e1 + 2 * (shared[0] - middle)], 30, seed=2)
    features = torch.cat([forget, retain])
    labels = torch.cat([forget_labels + 7, retain_labels])
    is_forget = torch.arange(len(features)) < len(forget)
    unique = forget_directions(features, labels, is_forget, GPPUConfig(direction="unique"))[:, 0]
    contrast = forget_directions(features, labels, is_forget, GPPUConfig(direction="contrast"))[:, 0]
    assert abs(float(unique @ e1)) > 0.98
    offsets = shared - middle
    assert (offsets @ unique).abs().max() < 0.05 * offsets.norm(dim=1).max()
    assert abs(float(contrast @ e1)) < 0.95 and (offsets @ contrast).abs().max() > 0.2 * offsets.norm(dim=1).max()


def test_the_whitened_direction_avoids_what_the_retained_classes_vary_along():
    """Retained classes spread far apart along e0; the forget class stands out along e0 (where the retained classes
    vary a lot) and along e1 (where they do not). 'contrast' is mostly e0, so removing it merges the retained classes;
    the default 'whitened' direction is mostly e1 and leaves their separation along e0 in place."""
    e0, e1 = torch.eye(6)[0], torch.eye(6)[1]
    centres = [c * 3.0 * e0 for c in (-2, -1, 1, 2)]
    retain, retain_labels = clusters(centres, 50)
    forget, forget_labels = clusters([4.0 * e0 + 1.0 * e1], 50, seed=2)
    features = torch.cat([forget, retain])
    labels = torch.cat([forget_labels + 9, retain_labels])
    is_forget = torch.arange(len(features)) < len(forget)
    no_graph = {"propagation_steps": 0}
    contrast = forget_directions(features, labels, is_forget, GPPUConfig(direction="contrast", **no_graph))[:, 0]
    whitened = forget_directions(features, labels, is_forget, GPPUConfig(**no_graph))[:, 0]
    assert abs(float(contrast @ e0)) > 0.9
    assert abs(float(whitened @ e1)) > 0.9
    assert GPPUConfig().direction == "whitened"

    def retained_spread_left(direction):  # retained centroids' spread along e0 after removing `direction`
        kept = retain - (retain @ direction)[:, None] * direction
        centroids = torch.stack([kept[retain_labels == c].mean(0) for c in range(4)])
        return float((centroids @ e0).std())

    assert retained_spread_left(whitened) > 0.9 * retained_spread_left(torch.zeros(6))
    assert retained_spread_left(contrast) < 0.5 * retained_spread_left(torch.zeros(6))


def unlearn(model, digits, make_args, forget_classes, **kwargs):
    method_kwargs = kwargs.pop("method_kwargs", {})
    args = make_args("gppu", method_kwargs=method_kwargs, **kwargs)
    trainer = UnlearningTrainer(
        model, args, train_dataset=digits["train"], eval_dataset=digits["test"], forget_classes=forget_classes
    )
    return trainer, trainer.unlearn()


@pytest.mark.parametrize("architecture", ["vit", "resnet"])
def test_the_head_no_longer_sees_the_forget_direction(architecture, trained, digits, make_args):
    model = trained(architecture)
    _, original_head = classification_head(model)
    trainer, result = unlearn(model, digits, make_args, [3], method_kwargs={"forget_objective": "projection"})
    directions = trainer.method.directions
    _, head = classification_head(result.model)
    assert directions.shape[1] == 1
    assert (head.weight @ directions).norm() < 1e-5 * head.weight.norm()
    assert (original_head.weight @ directions).norm() > 0.1 * original_head.weight.norm()  # it did see it
    metrics, original = result.metrics, result.original_metrics
    assert original["forget_accuracy"] > 0.85 and metrics["forget_accuracy"] <= 0.01
    assert metrics["retain_accuracy"] >= original["retain_accuracy"] - 0.01
    stages = metrics["sampled_accuracy"]
    # The whitened direction removes less than the plain offset: the head refit, where class 3 is never a target,
    # completes the forgetting.
    assert stages["head_refit"]["forget"] <= 0.05 < stages["original"]["forget"]
    assert metrics["finetune_steps"] == 0  # the stopping rule held after the head refit


def test_relabelling_makes_the_forget_rows_as_certain_as_an_unseen_class(trained, digits, make_args):
    """The default forget objective ("relabel") always fine-tunes the tail, pulling the forget rows to the model's own
    most likely retained class: they end up predicted with confidence (as a retrained model predicts an unseen class),
    where the head-only edit leaves them near-uniform, which a membership attack on confidence picks out."""
    model = trained("resnet")
    trainer, relabelled = unlearn(model, digits, make_args, [3])
    _, projected = unlearn(model, digits, make_args, [3], method_kwargs={"forget_objective": "projection"})
    assert relabelled.metrics["finetune_steps"] >= GPPUConfig().check_steps and projected.metrics["finetune_steps"] == 0
    # The fine-tuning stage's accuracy, taken from its checks, is that of the weights returned.
    assert relabelled.metrics["sampled_accuracy"]["finetune"] == trainer.method.measure_sampled_rows()
    for result in (relabelled, projected):
        assert result.metrics["forget_accuracy"] <= 0.01
        assert result.metrics["retain_accuracy"] >= result.original_metrics["retain_accuracy"] - 0.02

    def confidence(model):
        logits, _ = trainer.predict_logits(trainer.forget_view, model)
        return float(torch.softmax(torch.tensor(logits), -1).max(-1).values.mean())

    assert confidence(relabelled.model) > confidence(projected.model)


@pytest.mark.parametrize(
    "architecture, method_kwargs, tail",
    [
        ("vit", {}, ("vit.layers.1.", "vit.layernorm.", "classifier.")),
        ("vit", {"num_trainable_blocks": 0}, ("vit.layernorm.", "classifier.")),
        ("vit", {"trainable_modules": ["fc2"]}, ("vit.layers.0.mlp.fc2.", "vit.layers.1.mlp.fc2.", "classifier.")),
        ("resnet", {}, ("resnet.encoder.stages.1.", "classifier.")),
    ],
)
def test_finetuning_touches_only_the_chosen_blocks_and_the_head(
    architecture, method_kwargs, tail, trained, digits, make_args
):
    """Forced to fine-tune (3 steps): every parameter and buffer outside the tail is bit-identical (frozen BatchNorm
    layers keep their running statistics), the tail moves, and the head still ignores the forget direction."""
    model = trained(architecture)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainer, result = unlearn(
        model,
        digits,
        make_args,
        [3],
        max_steps=3,
        learning_rate=1e-3,
        method_kwargs={"stop_when_recovered": False, "head_steps": 0, **method_kwargs},
    )
    after = result.model.state_dict()
    assert set(after) == set(before)  # the head's parametrisation was folded back into a plain weight
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    outside = sorted(name for name in changed if not name.startswith(tail))
    assert not outside, outside
    assert {prefix for prefix in tail if any(name.startswith(prefix) for name in changed)} == set(tail)
    assert result.metrics["finetune_steps"] == 3 == trainer.state.global_step
    assert result.metrics["sampled_accuracy"]["finetune"] == trainer.method.measure_sampled_rows()
    _, head = classification_head(result.model)
    assert (head.weight @ trainer.method.directions).norm() < 1e-5 * head.weight.norm()
    assert all(parameter.requires_grad for parameter in result.model.parameters())  # flags restored


@pytest.mark.parametrize("forget_updates_batchnorm", [False, True])
def test_forget_batches_leave_the_batchnorm_statistics_alone(forget_updates_batchnorm, trained, digits, make_args):
    """In each step of the fine-tuning the forget batch runs first, then the retain batch: by default only the retain
    batch reaches the tail's BatchNorm layers with their running statistics tracked (a one-class batch would shift
    them); `forget_updates_batchnorm` restores the earlier behaviour. The layer still trains on batch statistics."""
    model = trained("resnet")
    norm = next(module for name, module in model.named_modules()
                if name.startswith("resnet.encoder.stages.1.") and isinstance(module, torch.nn.BatchNorm2d))  # fmt: skip
    seen = []
    norm.register_forward_pre_hook(lambda module, args: seen.append(module.track_running_stats) if module.training
                                   else None)  # fmt: skip
    unlearn(model, digits, make_args, [3], max_steps=3, learning_rate=1e-3,
            method_kwargs={"stop_when_recovered": False, "forget_updates_batchnorm": forget_updates_batchnorm})  # fmt: skip
    assert seen == ([True, True] if forget_updates_batchnorm else [False, True]) * 3
    assert norm.track_running_stats


def test_the_trained_blocks_train_with_their_dropout_and_the_frozen_ones_without(trained, digits, make_args):
    """Modules without parameters (dropout, activations) belong to the block that holds them: a trained block's
    dropout runs in training mode during the fine-tuning's steps (the passes with gradients), a frozen block's as at
    inference."""
    model = trained("vit")
    seen = {name: set() for name in ("vit.layers.0.dropout", "vit.layers.1.dropout")}
    for name in seen:
        model.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: seen[name].add(module.training) if torch.is_grad_enabled() else None
        )
    trainer, result = unlearn(model, digits, make_args, [3], max_steps=2,
                              method_kwargs={"stop_when_recovered": False, "replay_block_input": False})  # fmt: skip
    assert result.metrics["trained_blocks"] == ["vit.layers.1"]
    assert seen == {"vit.layers.0.dropout": {False}, "vit.layers.1.dropout": {True}}


def test_a_dropout_outside_the_trained_blocks_stays_as_at_inference(tmp_path):
    """Wav2Vec2's encoder applies its own dropout before its first block: the encoder also holds the trained block,
    but that dropout belongs to no trained module, so the frozen blocks still get the input of inference."""
    import datasets
    from tiny_models import tiny_classifier

    model, _ = tiny_classifier("wav2vec2", num_layers=2, hidden_dropout=0.5, layerdrop=0.0)
    rng = np.random.default_rng(0)
    rows = {"input_values": rng.standard_normal((60, 800)).astype(np.float32).tolist(),
            "label": [i % 3 for i in range(60)]}  # fmt: skip
    data = datasets.Dataset.from_dict(rows).train_test_split(test_size=0.25, seed=0)
    seen = {name: set() for name in ("wav2vec2.encoder.dropout", "wav2vec2.encoder.layers.1.dropout")}
    for name in seen:
        model.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: seen[name].add(module.training) if torch.is_grad_enabled() else None
        )
    args = UnlearnConfig(output_dir=str(tmp_path), method="gppu", max_steps=2, per_device_train_batch_size=4,
                         report_to=[], disable_tqdm=True, eval_before_unlearn=False, eval_after_unlearn=False,
                         method_kwargs={"stop_when_recovered": False, "replay_block_input": False})  # fmt: skip
    result = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"],
                               forget_classes=[1]).unlearn()  # fmt: skip
    assert result.metrics["trained_blocks"] == ["wav2vec2.encoder.layers.1"]
    assert seen == {"wav2vec2.encoder.dropout": {False}, "wav2vec2.encoder.layers.1.dropout": {True}}


def test_the_finetuning_epoch_covers_at_most_max_finetune_rows_retain_rows(trained, digits, make_args):
    """`max_finetune_rows`: the fine-tuning's epoch covers that many retain rows (each paired with a forget row), so
    its cost does not grow with the dataset; None runs over every retain row."""
    kwargs = {"max_finetune_rows": 96, "stop_when_recovered": False}
    capped, result = unlearn(trained("vit"), digits, make_args, [3], method_kwargs=kwargs)
    batch = capped.args.per_device_train_batch_size
    assert result.metrics["finetune_steps"] == -(-96 // batch)
    everything, result = unlearn(trained("vit"), digits, make_args, [3],
                                 method_kwargs={**kwargs, "max_finetune_rows": None})  # fmt: skip
    assert result.metrics["finetune_steps"] == -(-len(everything.retain_view) // batch) > -(-96 // batch)
    assert GPPUConfig().max_finetune_rows == 2000


@pytest.mark.parametrize("architecture, block", [("vit", "vit.layers.1"), ("resnet", "resnet.encoder.stages.1")])
def test_checks_through_the_replayed_tail_decide_as_the_whole_model_does(architecture, block, trained, digits, make_args):
    """`replay_block_input`: the checks and the training steps run only the fine-tuned tail on the recorded input of
    its first block, and compute what the whole model computes: the same checks, the same step kept, the same weights
    returned. The training rows not among the sampled ones (1,000 of the 1,290 retain rows; every forget row is) get
    that input from the frozen blocks run on them alone. A batch's rows computed in other batches differ by rounding,
    so the weights agree to rounding, except where the gradient is zero but for rounding: the attention keys' bias
    (softmax ignores it), which Adam's normalisation moves by that rounding and which changes no output."""
    _, replayed = unlearn(trained(architecture), digits, make_args, [3])
    _, whole = unlearn(trained(architecture), digits, make_args, [3], method_kwargs={"replay_block_input": False})
    assert replayed.metrics["replay_block"] == block and replayed.metrics["replay_mb"] > 0
    assert whole.metrics["replay_block"] is None and whole.metrics["replay_mb"] == 0.0
    assert "finetune_rows" not in whole.metrics
    # Each step forwards a batch of retain rows and one of forget rows.
    steps, batch = replayed.metrics["finetune_rows"], make_args("gppu").per_device_train_batch_size
    assert steps["replayed"] + steps["computed"] == 2 * batch * replayed.metrics["finetune_steps"]
    assert batch * replayed.metrics["finetune_steps"] < steps["replayed"] and steps["computed"] > 0
    assert replayed.metrics["finetune_steps"] >= GPPUConfig().check_steps
    for key in ("finetune_steps", "finetune_kept_step", "sampled_accuracy"):
        assert replayed.metrics[key] == whole.metrics[key], key
    for (name, got), expected in zip(replayed.model.state_dict().items(), whole.model.state_dict().values(), strict=True):
        if not name.endswith("k_proj.bias"):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
    pixels = torch.tensor(np.asarray(digits["test"]["pixel_values"][:64]), dtype=torch.float32)
    with torch.no_grad():
        logits = [result.model.eval()(pixel_values=pixels).logits for result in (replayed, whole)]
    torch.testing.assert_close(*logits, rtol=1e-4, atol=1e-5)


def test_a_second_request_keeps_the_first_class_forgotten(trained, digits, make_args):
    model = trained("vit")
    _, first = unlearn(model, digits, make_args, ["three"])
    assert first.model.config.unlearned_classes == [3]
    second_trainer, second = unlearn(first.model, digits, make_args, ["seven"])
    # Rows of the class forgotten before are in neither the retain set nor the metrics' retained classes.
    train_labels = np.asarray(digits["train"]["label"])
    assert not (train_labels[second_trainer.split.retain_indices] == 3).any()
    assert second_trainer.split.unlearned_before == [3]
    per_class = second.metrics["per_class_accuracy"]
    assert per_class["seven"] <= 0.01 and per_class["three"] <= 0.01
    assert second.metrics["unlearned_before_accuracy"] <= 0.01
    assert second.model.config.unlearned_classes == [3, 7]
    kept = [per_class[name] for name in per_class if name not in ("three", "seven")]
    original = first.original_metrics["per_class_accuracy"]
    assert np.mean(kept) >= np.mean([original[name] for name in original if name not in ("three", "seven")]) - 0.01


def test_without_the_record_the_retain_set_would_teach_the_class_again(trained, digits, make_args):
    """Why requests must know their history: the same second request, with `unlearned_classes` erased, retains class
    3 again and the refitted head learns it back."""
    _, first = unlearn(trained("vit"), digits, make_args, ["three"])
    first.model.config.unlearned_classes = None
    _, second = unlearn(first.model, digits, make_args, ["seven"])
    assert second.metrics["per_class_accuracy"]["three"] > 0.5


def test_several_classes_at_once(trained, digits, make_args):
    trainer, result = unlearn(trained("resnet"), digits, make_args, [3, 7])
    assert result.metrics["forget_directions"] == 2
    per_class = result.metrics["per_class_accuracy"]
    assert per_class["three"] <= 0.01 and per_class["seven"] <= 0.01
    kept = [per_class[name] for name in per_class if name not in ("three", "seven")]
    assert np.mean(kept) >= 0.95


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tail_is_the_last_block_and_what_follows_it(family):
    torch.manual_seed(0)
    model, inputs = tiny_classifier(family, num_layers=2)
    blocks, tail = model_tail(model, inputs, num_blocks=1)
    expected_block = {
        "vit": "vit.layers.1",
        "deit": "deit.layers.1",
        "resnet": "resnet.encoder.stages.1",
        "convnext": "convnext.encoder.stages.1",
        "ast": "audio_spectrogram_transformer.layers.1",
        "wav2vec2": "wav2vec2.encoder.layers.1",  # not the convolutional feature extractor's layers
        "hubert": "hubert.encoder.layers.1",
    }[family]
    assert blocks == [expected_block]
    head_name, _ = classification_head(model)
    assert tail[-1] == head_name
    after_blocks = [name for name in tail if not name.startswith(expected_block + ".")]
    assert (
        after_blocks
        == {
            "vit": ["vit.layernorm", "classifier"],
            "deit": ["deit.layernorm", "classifier"],
            "resnet": ["classifier.1"],
            "convnext": ["convnext.layernorm", "classifier"],
            "ast": ["audio_spectrogram_transformer.layernorm", "classifier.layernorm", "classifier.dense"],
            "wav2vec2": ["projector", "classifier"],
            "hubert": ["projector", "classifier"],
        }[family]
    )
    two_blocks, _ = model_tail(model, inputs, num_blocks=2)
    assert two_blocks == [expected_block[:-1] + "0", expected_block]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_unlearns_through_the_trainer(family, tmp_path):
    """Features, graph, projection, head refit and (forced) block fine-tuning on each family's tiny model."""
    import datasets

    torch.manual_seed(0)
    model, inputs = tiny_classifier(family, num_layers=2)
    name = next(iter(inputs))
    rows = torch.randn(24, *inputs[name].shape[1:])
    labels = torch.arange(24) % 4
    rows += labels.reshape(-1, *[1] * (rows.dim() - 1)).float()  # learnable-ish classes; only the mechanics matter
    dataset = datasets.Dataset.from_dict({name: rows.numpy(), "label": labels.tolist()}).with_format("numpy")
    args = UnlearnConfig(
        output_dir=str(tmp_path), method="gppu", max_steps=2, learning_rate=1e-3, disable_tqdm=True,
        per_device_train_batch_size=4, report_to="none", eval_before_unlearn=False,
        method_kwargs={"stop_when_recovered": False, "num_neighbors": 3},
    )  # fmt: skip
    trainer = UnlearningTrainer(model, args, train_dataset=dataset, eval_dataset=dataset, forget_classes=[1])
    result = trainer.unlearn()
    _, head = classification_head(result.model)
    assert (head.weight @ trainer.method.directions).norm() < 1e-5 * head.weight.norm()
    assert result.metrics["finetune_steps"] == 2 and result.metrics["trainable_parameters"] > head.weight.numel()


def test_sample_level_requests_are_refused(trained, digits, make_args):
    with pytest.raises(ValueError, match="Method 'gppu' forgets whole classes.*`forget_classes`"):
        UnlearningTrainer(
            trained("resnet"), make_args("gppu"), train_dataset=digits["train"], eval_dataset=digits["test"],
            forget_indices=[0, 1, 2],
        )  # fmt: skip


def test_trainable_modules_that_match_nothing_are_named(trained, digits, make_args):
    with pytest.raises(ValueError, match=r"`trainable_modules=\['nothing'\]` matches no module"):
        unlearn(
            trained("resnet"),
            digits,
            make_args,
            [3],
            method_kwargs={"trainable_modules": ["nothing"], "stop_when_recovered": False},
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_neighbors": 0}, "num_neighbors"),
        ({"teleport": 0.0}, "teleport"),
        ({"propagation_steps": -1}, "propagation_steps"),
        ({"lambda_proj": 0.0, "lambda_retain": 0.0}, "lambda_proj"),
        ({"retain_tolerance": 2.0}, "retain_tolerance"),
        ({"head_learning_rate": 0.0}, "head_learning_rate"),
        ({"num_retain_samples": 0}, "num_retain_samples"),
        ({"max_finetune_rows": 0}, "max_finetune_rows"),
        ({"replay_checks": False}, "`replay_checks` is now `replay_block_input`"),  # renamed in stop 32
    ],
)
def test_bad_method_kwargs_are_named(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        UnlearnConfig(output_dir=str(tmp_path), method="gppu", method_kwargs=kwargs)


def test_several_gpus_in_one_process_are_refused(trained):
    """nn.DataParallel copies the model onto each GPU for every forward: gppu's hooks on the model would not act on
    the replicas. Refused before any work, naming the way that works."""
    from types import SimpleNamespace

    from hf_unlearn.methods.gppu import GPPU

    with pytest.raises(ValueError, match=r"several GPUs in one process \(2, nn.DataParallel\).*accelerate launch"):
        GPPU.check_settings(GPPUConfig(), SimpleNamespace(n_gpu=2), trained("resnet"))
    GPPU.check_settings(GPPUConfig(), SimpleNamespace(n_gpu=1), trained("resnet"))


def test_frozen_blocks_are_not_dropped_whatever_is_trained(tmp_path):
    """A stable-layer-norm Wav2Vec2 (wav2vec2-large, HuBERT-large) holds its final layer norm, a tail module, in the
    encoder, so the encoder is not frozen; with `trainable_modules` (or no trained block) the tail names no block.
    Either way the block list's owners must not run in training mode during the fine-tuning: LayerDrop (here 1.0)
    would skip the frozen blocks and SpecAugment mask their input."""
    import datasets
    from tiny_models import tiny_classifier

    no_dropout = {name: 0.0 for name in ("hidden_dropout", "attention_dropout", "activation_dropout",
                                         "feat_proj_dropout", "final_dropout")}  # fmt: skip
    model, _ = tiny_classifier("wav2vec2", num_layers=2, do_stable_layer_norm=True, layerdrop=1.0, **no_dropout)
    rng = np.random.default_rng(0)
    rows = {"input_values": rng.standard_normal((60, 800)).astype(np.float32).tolist(),
            "label": [i % 3 for i in range(60)]}  # fmt: skip
    data = datasets.Dataset.from_dict(rows).train_test_split(test_size=0.25, seed=0)
    seen = []
    model.wav2vec2.encoder.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    args = UnlearnConfig(output_dir=str(tmp_path), method="gppu", max_steps=2, per_device_train_batch_size=4,
                         report_to=[], disable_tqdm=True, eval_before_unlearn=False, eval_after_unlearn=False,
                         method_kwargs={"trainable_modules": ["classifier", "projector", "wav2vec2.encoder.layer_norm"],
                                        "stop_when_recovered": False})  # fmt: skip
    UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"], forget_classes=[1]).unlearn()
    assert seen and not any(seen)
