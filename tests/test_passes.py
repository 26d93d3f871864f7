"""Forward passes over shards: counts that stop early once a limit is known to be exceeded."""

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from hf_unlearn.passes import shard_accuracy, shard_counts


class CountingLogits(torch.nn.Module):
    """A 'model' whose logits are its input (`x`), counting the batches it sees."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return SimpleNamespace(logits=x)


def rows(correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of 2 classes for rows of class 0, predicted right where `correct`."""
    logits = torch.tensor([[1.0, 0.0] if right else [0.0, 1.0] for right in correct])
    return logits, torch.zeros(len(correct), dtype=torch.long)


# Three batches of 2 rows: right/right, wrong/right, wrong/wrong (3 of 6 right).
BATCHES = [(torch.arange(2 * i, 2 * i + 2), {"x": x, "labels": y})
           for i, (x, y) in enumerate(rows(pattern) for pattern in ([True, True], [False, True], [False, False]))]  # fmt: skip


@pytest.mark.parametrize("limits, counts, calls", [
    ({}, (3, 6), 3),
    ({"max_wrong": 3}, (3, 6), 3),  # exactly at the limit: within it
    ({"max_wrong": 2}, None, 3),  # the third batch takes it past
    ({"max_correct": 1}, None, 1),  # past it after the first batch: the pass stops there
    ({"max_correct": 2}, None, 2),
    ({"max_correct": 3, "max_wrong": 0}, None, 2),
])  # fmt: skip
def test_counts_stop_as_soon_as_a_limit_is_passed(limits, counts, calls):
    model = CountingLogits()
    assert shard_counts(model, BATCHES, Accelerator(cpu=True), **limits) == counts
    assert model.calls == calls


def test_the_accuracy_is_the_counts_ratio_and_none_without_rows():
    accelerator = Accelerator(cpu=True)
    assert shard_accuracy(CountingLogits(), BATCHES, accelerator) == 0.5
    assert shard_accuracy(CountingLogits(), [], accelerator) is None


def test_measuring_passes_transform_each_row_once():
    """`shard_batches` reads contiguous chunks (`flatten_indices`), which writes rows as read: a dataset's transform
    (`with_transform`) must still run once per row, not on rows it already transformed."""
    from types import SimpleNamespace

    import datasets

    from hf_unlearn.passes import shard_batches

    rows = datasets.Dataset.from_dict({"x": [1.0, 2.0, 3.0, 4.0, 5.0], "label": [0, 1, 2, 3, 4]})
    scaled = rows.with_transform(lambda batch: {**batch, "x": [10 * v for v in batch["x"]]}).select([4, 0, 2])
    single = SimpleNamespace(num_processes=1, process_index=0)
    read = [row["x"] for _, batch in shard_batches(scaled, single, list, lambda batch: batch, batch_size=2)
            for row in batch]  # fmt: skip
    assert read == [50.0, 10.0, 30.0] == scaled[:]["x"]


def test_a_dataset_with_its_own_transform_keeps_its_raw_rows():
    """`with_model_inputs` would `map` the transformed rows into the cache and the transform would run on them again
    when read: a dataset with a transform is left as it is."""
    import datasets
    import numpy as np
    from PIL import Image

    from hf_unlearn.data import UnlearningCollator, with_model_inputs

    images = [Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)) for value in (0, 255)]
    rows = datasets.Dataset.from_dict({"image": images, "label": [0, 1]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.Value("int64")}))  # fmt: skip
    transformed = rows.with_transform(lambda batch: batch)
    assert with_model_inputs(transformed, UnlearningCollator("label", None)) is transformed
