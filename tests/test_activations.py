"""Layer-input Gram statistics: what a layer sees, as rows, summed without storing them; layers found on every family."""

import pytest
import torch
from tiny_models import FAMILIES, tiny_classifier
from torch import nn

from hf_unlearn.activations import (
    BlockInputReplay,
    GramStatistics,
    batchnorm_statistics_kept,
    capturing,
    find_target_modules,
    layer_input_shape,
    pooled_rows,
)
from hf_unlearn.models import classification_head, model_tail


def record(modules, batches, num_samples, conv_window=None, seed=0, token_rows="tokens", max_token_rows=None):
    """Run `batches` (list of (sample_ids, input)) through each module directly and return the statistics."""
    statistics = GramStatistics(modules, num_samples=num_samples, conv_window=conv_window, seed=seed,
                                token_rows=token_rows, max_token_rows=max_token_rows)  # fmt: skip
    with statistics.recording():
        for ids, x in batches:
            statistics.sample_ids = ids
            for module in modules.values():
                module(x)
    return statistics


def test_few_rows_are_kept_and_many_streamed_into_the_gram_matrix():
    """`keep_rows`: a layer keeps its input rows while they number at most that fraction of its input size, and gives
    the same Gram matrix as streaming; past it, the rows kept so far are folded into the streamed Gram matrix."""
    torch.manual_seed(0)
    layer = nn.Linear(40, 3)
    x = torch.randn(6, 3, 40)  # 6 samples x 3 tokens: 18 rows
    statistics = GramStatistics({"layer": layer}, num_samples=6, keep_rows=0.5)  # at most 20 rows kept
    with statistics.recording():
        for ids in (torch.arange(3), torch.arange(3, 6)):
            statistics.sample_ids = ids
            layer(x[ids])
    rows = x.reshape(-1, 40)
    torch.testing.assert_close(statistics.kept_rows("layer")[0], rows, rtol=0, atol=0)
    torch.testing.assert_close(statistics.grams["layer"][0], rows.T @ rows)
    streamed = record({"layer": layer}, [(torch.arange(6), x)], 6)
    assert streamed.kept_rows("layer") is None  # keep_rows=0: never
    torch.testing.assert_close(statistics.gram("layer"), streamed.gram("layer"))

    many = GramStatistics({"layer": layer}, num_samples=10, keep_rows=0.5)
    more = torch.randn(10, 3, 40)  # 30 rows: past 20
    with many.recording():
        for ids in (torch.arange(4), torch.arange(4, 8), torch.arange(8, 10)):  # 12 rows kept, 24: folded, streamed
            many.sample_ids = ids
            layer(more[ids])
    assert many.kept_rows("layer") is None and many.rows["layer"] == 30
    flat = more.reshape(-1, 40)
    torch.testing.assert_close(many.grams["layer"][0], flat.T @ flat)
    with pytest.raises(ValueError, match="keep_rows"):
        GramStatistics({"layer": layer}, num_samples=2, keep_rows=1.0)


def test_a_grouped_conv_keeps_its_rows_per_group():
    """`keep_rows` on a grouped conv: `(groups, n, d)` rows, each group's Gram matrix as streaming gives it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, kernel_size=3, padding=1, groups=2)  # d = 2 channels x 9 = 18 per group
    x = torch.randn(2, 4, 2, 2)  # 4 positions a sample: 8 rows, at most 0.5 x 18 = 9 kept
    grams = {}
    for keep in (0.0, 0.5):
        statistics = GramStatistics({"conv": conv}, num_samples=2, conv_window=None, keep_rows=keep)
        with statistics.recording():
            statistics.sample_ids = torch.arange(2)
            conv(x)
        grams[keep] = statistics.gram("conv")
        if keep:
            assert statistics.kept_rows("conv").shape == (2, 8, 18)
    torch.testing.assert_close(grams[0.5], grams[0.0])


def test_linear_gram_is_the_sum_of_token_outer_products():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    x = torch.randn(4, 5, 6)  # batch x tokens x features
    statistics = record({"layer": layer}, [(torch.arange(4), x)], 4)
    rows = x.reshape(-1, 6)
    torch.testing.assert_close(statistics.grams["layer"][0], rows.T @ rows)
    assert statistics.rows["layer"] == 20


def test_mean_token_rows_are_one_row_per_sample():
    """`token_rows="mean"`: each sample's mean over its token dimensions is its one row; a 2-D input is unchanged."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    x = torch.randn(4, 5, 6)
    statistics = record({"layer": layer}, [(torch.arange(4), x)], 4, token_rows="mean")
    means = x.mean(dim=1)
    torch.testing.assert_close(statistics.grams["layer"][0], means.T @ means)
    assert statistics.rows["layer"] == 4
    tokens = record({"layer": layer}, [(torch.arange(4), x)], 4)
    assert not torch.allclose(tokens.grams["layer"][0], statistics.grams["layer"][0])  # the two really differ
    flat = torch.randn(4, 6)
    torch.testing.assert_close(record({"layer": layer}, [(torch.arange(4), flat)], 4, token_rows="mean").grams["layer"][0],
                               flat.T @ flat)  # fmt: skip
    with pytest.raises(ValueError, match="token_rows"):
        GramStatistics({"layer": layer}, num_samples=4, token_rows="cls")


def test_max_token_rows_keeps_that_many_of_each_samples_tokens_whatever_the_batches():
    """`max_token_rows`: each sample gives ceil(max_token_rows / num_samples) of its own tokens, the same ones however
    the pass is batched; enough rows for every token is every token; the seed draws other tokens."""
    layer = nn.Linear(8, 3)
    # Sample s, token t is (s + 1) times the unit vector e_t: the Gram's diagonal says which tokens were kept.
    x = torch.stack([(s + 1) * torch.eye(8) for s in range(5)])  # 5 samples x 8 tokens x 8 features
    capped = record({"layer": layer}, [(torch.arange(5), x)], 5, max_token_rows=15)  # 3 tokens a sample
    assert capped.rows["layer"] == 15
    gram = capped.grams["layer"][0]
    assert torch.count_nonzero(gram - torch.diag(gram.diagonal())) == 0  # only kept tokens, each of one sample
    split = record({"layer": layer}, [(torch.arange(2), x[:2]), (torch.arange(2, 5), x[2:])], 5, max_token_rows=15)
    torch.testing.assert_close(split.grams["layer"], capped.grams["layer"])
    for sample in range(5):  # alone, each sample leaves 3 tokens on the diagonal
        alone = record({"layer": layer}, [(torch.tensor([sample]), x[sample : sample + 1])], 5, max_token_rows=15)
        assert torch.count_nonzero(alone.grams["layer"][0].diagonal()) == 3
    full = record({"layer": layer}, [(torch.arange(5), x)], 5, max_token_rows=40)
    torch.testing.assert_close(full.grams["layer"][0], x.reshape(-1, 8).T @ x.reshape(-1, 8))
    other = record({"layer": layer}, [(torch.arange(5), x)], 5, seed=1, max_token_rows=15)
    assert not torch.equal(other.grams["layer"], capped.grams["layer"])
    with pytest.raises(ValueError, match="max_token_rows"):
        GramStatistics({"layer": layer}, num_samples=5, max_token_rows=0)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, stride=1, padding=1),
        nn.Conv2d(3, 6, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2)),
        nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"),
    ],
)
def test_conv_rows_are_the_im2col_patches_the_layer_multiplies(conv):
    """W_flat @ patch reproduces the conv output at every position, so the rows are exactly the layer's inputs."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8)
    statistics = GramStatistics({"conv": conv}, num_samples=2, conv_window=None)
    rows = statistics.input_rows("conv", conv, x)  # (n, 1, d)
    output = conv(x)
    expected = output.permute(0, 2, 3, 1).reshape(-1, output.shape[1]) - conv.bias
    torch.testing.assert_close(rows[:, 0] @ conv.weight.reshape(conv.out_channels, -1).T, expected)


def test_grouped_and_1d_convs_get_one_gram_per_group():
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 6, 3, stride=2, groups=2)
    x = torch.randn(3, 4, 11)
    statistics = record({"conv": conv}, [(torch.arange(3), x)], 3)
    assert layer_input_shape(conv) == (2, 6)
    gram = statistics.grams["conv"]
    assert gram.shape == (2, 6, 6)
    patches = x.unfold(2, 3, 2)  # (batch, channels, positions, kernel)
    for group in range(2):
        rows = patches[:, 2 * group : 2 * group + 2].permute(0, 2, 1, 3).reshape(-1, 6)
        torch.testing.assert_close(gram[group], rows.T @ rows)


def test_conv_crops_depend_on_the_sample_not_the_batching():
    """The paper's random 3k x 3k crop per sample: the same samples give the same statistics in any batch split."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(6, 2, 20, 20)
    whole = record({"conv": conv}, [(torch.arange(6), x)], 6, conv_window=3)
    pieces = record({"conv": conv}, [(torch.arange(0, 4), x[:4]), (torch.arange(4, 6), x[4:])], 6, conv_window=3)
    torch.testing.assert_close(whole.grams["conv"], pieces.grams["conv"])
    # 3k x 3k input crop of a 3x3 conv, stride 1: 7 x 7 of the 20 x 20 output positions per sample.
    assert whole.rows["conv"] == 6 * 7 * 7
    full = record({"conv": conv}, [(torch.arange(6), x)], 6, conv_window=None)
    assert full.rows["conv"] == 6 * 20 * 20


def test_the_official_crop_takes_the_unpadded_input_and_pads_it_again():
    """`conv_crop="official"`: a 9 x 9 crop of the unpadded 20 x 20 input, padded as the layer pads (11 x 11) and
    unfolded: 81 patches of a 3x3 conv per sample, where the default windows give 49. A crop inside the image gets zero
    borders where the image has pixels: its border patches differ from the layer's own patches there."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(4, 1, 20, 20) + 1.0  # no zeros in the image itself
    statistics = GramStatistics({"conv": conv}, num_samples=4, conv_window=3, conv_crop="official")
    statistics.sample_ids = torch.arange(4)
    rows = statistics.input_rows("conv", conv, x)
    assert rows.shape == (4 * 81, 1, 9)
    zero_entries = (rows == 0).any(-1).reshape(4, 81).sum(1)
    assert (zero_entries == 32).all()  # the 9 x 9 crop's border: 4 * 9 - 4 patches touch the padding
    windows = GramStatistics({"conv": conv}, num_samples=4, conv_window=3)
    windows.sample_ids = torch.arange(4)
    assert windows.input_rows("conv", conv, x).shape == (4 * 49, 1, 9)
    with pytest.raises(ValueError, match="conv_crop"):
        GramStatistics({"conv": conv}, num_samples=4, conv_crop="centre")


def test_sample_ids_are_required_when_cropping():
    conv = nn.Conv2d(1, 1, 3)
    statistics = GramStatistics({"conv": conv}, num_samples=2, conv_window=1)
    with statistics.recording(), pytest.raises(RuntimeError, match="sample_ids"):
        conv(torch.randn(2, 1, 12, 12))
    assert not conv._forward_pre_hooks  # hooks removed on error


def test_target_modules_by_regex_list_and_exclusion(trained):
    model = trained("vit")
    everything = find_target_modules(model)
    assert "classifier" in everything and "vit.embeddings.patch_embeddings.projection" in everything
    assert list(find_target_modules(model, r".*mlp\.fc\d")) == [
        "vit.layers.0.mlp.fc1",
        "vit.layers.0.mlp.fc2",
        "vit.layers.1.mlp.fc1",
        "vit.layers.1.mlp.fc2",
    ]
    assert list(find_target_modules(model, ["fc2", "classifier"])) == [
        "vit.layers.0.mlp.fc2",
        "vit.layers.1.mlp.fc2",
        "classifier",
    ]
    assert "classifier" not in find_target_modules(model, exclude_modules=["classifier"])
    with pytest.raises(ValueError, match=r"target_modules=\['nothing'\].*named like"):
        find_target_modules(model, ["nothing"])


def test_layers_with_a_forward_of_their_own_are_not_projected():
    """BiT's convolutions standardise their weight (and pad) inside forward: their output is not weight x input, so a
    projection written into `.weight` would be standardised away. Only stock Linear / Conv forwards are targeted."""
    import transformers as tf

    config = tf.BitConfig(embedding_size=32, hidden_sizes=[32, 64], depths=[1, 1], num_groups=8, num_labels=3)
    model = tf.BitForImageClassification(config)
    found = find_target_modules(model)
    assert "classifier.1" in found  # the head is a plain Linear
    assert not any(type(module).__name__ == "WeightStandardizedConv2d" for module in found.values())
    assert any(type(module).__name__ == "WeightStandardizedConv2d" for module in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gets_statistics_for_every_linear_and_conv_layer(family):
    torch.manual_seed(0)
    model, inputs = tiny_classifier(family)
    model.eval()
    layers = find_target_modules(model)
    plain = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) and not hasattr(module, "parametrizations")
    ]
    assert set(layers) == set(plain)
    if family in ("wav2vec2", "hubert"):  # the weight-normalised positional conv is the one layer left out
        assert not any("pos_conv" in name for name in layers)
    statistics = GramStatistics(layers, num_samples=2)
    statistics.sample_ids = torch.arange(2)
    with torch.no_grad(), statistics.recording():
        model(**inputs)
    assert not any(module._forward_pre_hooks for module in layers.values())
    for name, module in layers.items():
        gram = statistics.grams[name]
        assert statistics.rows[name] > 0, name
        assert gram.shape[0] == layer_input_shape(module)[0], name
        torch.testing.assert_close(gram, gram.transpose(-1, -2))  # symmetric, positive semi-definite
        assert torch.linalg.eigvalsh(gram.double()).min() > -1e-6 * gram.abs().max(), name


def test_depthwise_conv_rows_match_its_output():
    """ConvNeXt's depthwise 7x7: each channel's patches times its own kernel give that channel's output."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 7, padding=3, groups=4)
    x = torch.randn(1, 4, 9, 9)
    rows = GramStatistics({"c": conv}, 1, conv_window=None).input_rows("c", conv, x)  # (81, 4, 49)
    output = torch.einsum("ngd,gd->ng", rows, conv.weight.reshape(4, 49)) + conv.bias
    torch.testing.assert_close(output, conv(x)[0].reshape(4, -1).T)


def batches_of(inputs, count=3):
    """`count` keyed batches `(sample_ids, batch)` of 2 rows, as `shard_batches` yields them."""
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.arange(2 * i, 2 * i + 2), {name: torch.randn(value.shape, generator=generator) for name, value in inputs.items()})
        for i in range(count)
    ]  # fmt: skip


def narrow_stem_resnet():
    """A ResNet whose stem output (4 channels) is not the last stage's input (8 channels, half the size)."""
    import transformers as tf

    config = tf.ResNetConfig(embedding_size=4, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4)
    return tf.ResNetForImageClassification(config), {"pixel_values": torch.randn(2, 3, 32, 32)}


def record_replay(model, replay, batches, head):
    """The recording pass: logits per batch, and the head's inputs (pooled) in row order."""
    captured_rows = []
    with torch.no_grad(), replay.recording():
        logits = []
        for _, batch in batches:
            with capturing(head) as captured:
                logits.append(model(**batch).logits)
            captured_rows.append(pooled_rows(captured.value))
    return logits, torch.cat(captured_rows)


@pytest.mark.parametrize("family", [*FAMILIES, "narrow-stem resnet"])
def test_a_replayed_block_input_gives_the_full_passes_logits_without_the_blocks_before_it(family):
    """Recorded once, the last block's input stands in for every block before it: the same logits, the dropped blocks
    never run, and the model's block list is whole again afterwards."""
    torch.manual_seed(0)
    model, inputs = narrow_stem_resnet() if family == "narrow-stem resnet" else tiny_classifier(family, num_layers=2)
    model.eval()
    blocks, _ = model_tail(model, inputs, num_blocks=1)
    replay = BlockInputReplay(model, blocks[0])
    batches = batches_of(inputs)
    _, head = classification_head(model)
    full, head_inputs = record_replay(model, replay, batches, head)
    assert len(replay.inputs) == 3 and len(replay.rows) == 6 and replay.nbytes > 0
    block_list = model.get_submodule(replay.list_name)
    ran = []
    handles = [block.register_forward_hook(lambda *_: ran.append(1)) for block in block_list[: replay.index]]
    with torch.no_grad(), replay.replaying():
        replayed = [model(**batch).logits for _, batch in batches]
    for handle in handles:
        handle.remove()
    assert not ran and replay.index >= 1 and (replay.replayed_rows, replay.computed_rows) == (6, 0)
    for expected, got in zip(full, replayed, strict=True):
        torch.testing.assert_close(got, expected)
    assert model.get_submodule(replay.list_name) is block_list and len(block_list) == replay.index + 1
    assert replay.matches(batches, head, head_inputs)
    assert not replay.matches(batches, head, head_inputs + 0.1)  # what the check compares


@pytest.mark.parametrize("family", ["vit", "wav2vec2", "resnet"])
def test_recorded_rows_replay_in_any_batch_and_unrecorded_rows_are_computed(family):
    """A row is recognised by its inputs alone: recorded rows regrouped (shuffled across the recorded batches, with
    labels the model never saw when they were recorded) replay and give the whole model's logits. In a batch that
    also holds a row never recorded, that row's block input is computed (the blocks before it run on it alone) and
    the logits are still the whole model's; a recorded row changed by one bit is such a row."""
    torch.manual_seed(0)
    model, inputs = tiny_classifier(family, num_layers=2)
    model.eval()
    blocks, _ = model_tail(model, inputs, num_blocks=1)
    replay = BlockInputReplay(model, blocks[0])
    batches = batches_of(inputs)
    record_replay(model, replay, batches, classification_head(model)[1])
    rows = {name: torch.cat([batch[name] for _, batch in batches]) for name in inputs}
    order = torch.tensor([5, 0, 3])
    regrouped = {name: value[order] for name, value in rows.items()}
    with torch.no_grad():
        expected = model(**regrouped).logits  # outside `replaying`: the whole model
        ran = []
        handles = [block.register_forward_hook(lambda *_: ran.append(1))
                   for block in model.get_submodule(replay.list_name)[: replay.index]]  # fmt: skip
        with replay.replaying():
            got = model(**regrouped, labels=torch.tensor([1, 2, 3])).logits
            assert not ran and (replay.replayed_rows, replay.computed_rows) == (3, 0)
            flipped = {name: value[:1].clone() for name, value in rows.items()}
            flipped[next(iter(flipped))].view(-1).view(torch.int32)[0] ^= 1  # the lowest bit of one value
            mixed = {name: torch.cat([value[3:4], torch.randn_like(value[:1]), flipped[name]])
                     for name, value in rows.items()}  # fmt: skip
            got_mixed = model(**mixed).logits
            assert ran and (replay.replayed_rows, replay.computed_rows) == (4, 2)
            ran.clear()
            model(**flipped)  # no recorded row: the whole model
            assert ran and (replay.replayed_rows, replay.computed_rows) == (4, 3)
        for handle in handles:
            handle.remove()
        expected_mixed = model(**mixed).logits
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_mixed, expected_mixed)
    assert len(model.get_submodule(replay.list_name)) == replay.index + 1  # whole after every pass


@pytest.mark.parametrize("family", ["wav2vec2", "hubert"])
def test_a_replayed_pass_skips_no_block_even_where_layerdrop_would(family):
    """With LayerDrop at 1 every block of a training-mode Wav2Vec2 / HuBERT encoder is skipped, and SpecAugment masks
    what reaches them; inside `replaying()` the modules that hold the blocks run as at inference (their own flag off
    for the pass, the blocks keep training mode, so dropout-free blocks give the eval-mode logits), for recorded rows
    and for rows computed beside them alike, and their flags are back afterwards."""
    torch.manual_seed(0)
    no_dropout = {name: 0.0 for name in ("hidden_dropout", "attention_dropout", "activation_dropout",
                                          "feat_proj_dropout", "final_dropout")}  # fmt: skip
    model, inputs = tiny_classifier(family, num_layers=2, layerdrop=1.0, **no_dropout)
    model.eval()
    blocks, _ = model_tail(model, inputs, num_blocks=1)
    replay = BlockInputReplay(model, blocks[0])
    batches = batches_of(inputs, count=1)
    record_replay(model, replay, batches, classification_head(model)[1])
    mixed = {name: torch.cat([value, torch.randn_like(value[:1])]) for name, value in batches[0][1].items()}
    with torch.no_grad():
        expected = model(**mixed).logits
        model.train()
        skipped = model(**mixed).logits  # LayerDrop skips both blocks
        with replay.replaying():
            got = model(**mixed).logits
        assert all(module.training for module in model.modules())
    assert (replay.replayed_rows, replay.computed_rows) == (2, 1)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(skipped, expected)


def test_a_pass_that_raised_inside_the_replay_leaves_the_next_ones_right():
    """A replayed pass that raises (caught inside `replaying()`, as an out-of-memory retry would) leaves the model
    whole, its modes as they were; the next pass, whose unrecorded row needs every block, gives the whole model's
    logits, and on leaving every module has the mode it had, also where a pass ran inside `evaluating`."""
    from hf_unlearn.activations import evaluating

    torch.manual_seed(0)
    model, inputs = tiny_classifier("vit", num_layers=2)
    model.eval()
    blocks, _ = model_tail(model, inputs, num_blocks=1)
    replay = BlockInputReplay(model, blocks[0])
    batches = batches_of(inputs, count=1)
    record_replay(model, replay, batches, classification_head(model)[1])
    recorded = batches[0][1]
    mixed = {name: torch.cat([value, torch.randn_like(value[:1])]) for name, value in recorded.items()}
    with torch.no_grad():
        expected = model(**mixed).logits
    failures = []

    def fail_once(module, args, output):
        if not failures:
            failures.append(1)
            raise RuntimeError("out of memory (simulated)")

    handle = model.get_submodule(blocks[0]).register_forward_hook(fail_once)
    model.train()
    with torch.no_grad(), replay.replaying():
        with pytest.raises(RuntimeError, match="simulated"):
            model(**recorded)
        assert len(model.get_submodule(replay.list_name)) == replay.index + 1
        assert all(module.training for module in model.modules())
        with evaluating(model):
            got = model(**mixed).logits
    handle.remove()
    torch.testing.assert_close(got, expected)
    assert len(model.get_submodule(replay.list_name)) == replay.index + 1
    assert all(module.training for module in model.modules())


def test_a_model_that_reads_every_blocks_output_fails_the_replay_check():
    """Wav2Vec2 with a weighted sum of every layer's output: the head's input needs the dropped blocks too, so the
    replay does not reproduce it, and the check says so."""
    torch.manual_seed(0)
    model, inputs = tiny_classifier("wav2vec2", num_layers=2, use_weighted_layer_sum=True)
    model.eval()
    blocks, _ = model_tail(model, inputs, num_blocks=1)
    replay = BlockInputReplay(model, blocks[0])
    batches = batches_of(inputs, count=1)
    _, head = classification_head(model)
    _, head_inputs = record_replay(model, replay, batches, head)
    assert not replay.matches(batches, head, head_inputs)
    assert len(model.get_submodule(replay.list_name)) == 2  # restored


class IndexedBlocks(nn.Module):
    """A model whose forward pass indexes its blocks by a fixed count instead of iterating the list."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        hidden = self.embed(x)
        for index in range(3):
            hidden = torch.tanh(self.blocks[index](hidden))
        return type("Output", (), {"logits": self.head(hidden)})()


def test_a_model_that_does_not_iterate_its_blocks_fails_the_replay_check():
    torch.manual_seed(0)
    model = IndexedBlocks()
    replay = BlockInputReplay(model, "blocks.2")
    batches = [(torch.arange(2), {"x": torch.randn(2, 4)})]
    with torch.no_grad(), replay.recording():
        for _, batch in batches:
            model(**batch)
    assert not replay.matches(batches, model.head, torch.zeros(2, 8))
    assert len(model.blocks) == 3  # restored after the failed replay
    with pytest.raises(ValueError, match="not a block of an nn.ModuleList"):
        BlockInputReplay(model, "embed")


def test_batchnorm_statistics_kept_normalises_with_the_batch_and_leaves_the_running_statistics():
    """Inside the block a training-mode BatchNorm computes what it always does (batch statistics), but its running
    mean, variance and batch count stay; an eval-mode one is left as it is; the layer tracks again after, also after
    an error. Outside the block the same batch moves the statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Sequential(nn.BatchNorm2d(3).eval()))
    x = torch.randn(4, 2, 5, 5) * 3 + 1
    model(x)  # training mode: this call moves the first layer's running statistics once
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with batchnorm_statistics_kept(model):
        inside = model(x)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    with torch.no_grad():
        first = model[1]
        manual = nn.functional.batch_norm(model[0](x), None, None, first.weight, first.bias, True, 0.0, first.eps)
        manual = model[2](manual)
    assert torch.allclose(inside, manual, atol=1e-6)
    with pytest.raises(RuntimeError), batchnorm_statistics_kept(model):
        raise RuntimeError("inside")
    assert model[1].track_running_stats and model[2][0].track_running_stats
    model(x)
    assert not torch.equal(before["1.running_mean"], model.state_dict()["1.running_mean"])


def test_padded_audio_frames_are_no_rows_of_the_statistics():
    """Clips of different lengths padded to the longest, with an attention mask: each clip's statistics are those of
    the clip alone, whatever it was batched with (the padded frames are no input of the sample)."""
    from hf_unlearn.activations import unpadded

    torch.manual_seed(0)
    model, _ = tiny_classifier("wav2vec2", num_layers=1, feat_extract_norm="layer", do_stable_layer_norm=True)
    model.eval()
    layers = find_target_modules(model)
    long_clip, short_clip = torch.randn(1, 800), torch.randn(1, 400)
    batch = {"input_values": torch.cat([long_clip, torch.cat([short_clip, torch.zeros(1, 400)], 1)]),
             "attention_mask": torch.cat([torch.ones(1, 800), torch.cat([torch.ones(1, 400), torch.zeros(1, 400)], 1)]
                                         ).long()}  # fmt: skip

    def statistics_of(passes):
        statistics = GramStatistics(layers, num_samples=2, conv_window=None)
        with torch.no_grad():
            for ids, rows in passes:
                statistics.sample_ids = ids
                with statistics.recording():
                    model(**rows)
        return statistics

    batched = statistics_of(unpadded(torch.arange(2), batch))
    alone = statistics_of([(torch.tensor([0]), {"input_values": long_clip}), (torch.tensor([1]), {"input_values": short_clip})])
    for name in layers:
        assert batched.rows[name] == alone.rows[name], name
        torch.testing.assert_close(batched.grams[name], alone.grams[name], rtol=1e-4, atol=1e-4)
    # A batch without padding passes as it is.
    full = {"input_values": batch["input_values"], "attention_mask": torch.ones(2, 800, dtype=torch.long)}
    assert [ids.tolist() for ids, _ in unpadded(torch.arange(2), full)] == [[0, 1]]


def test_evaluating_gives_every_layer_its_own_mode_back():
    """A model training with a BatchNorm layer frozen in eval mode gets that layer back in eval mode, not the
    model's training mode."""
    from hf_unlearn.activations import evaluating

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    model[1].eval()
    with evaluating(model):
        assert not any(module.training for module in model.modules())
    assert model.training and model[0].training and not model[1].training
