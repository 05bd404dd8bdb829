"""The memmap batch feeder: whole batches, every image once per epoch, order fixed by (seed, epoch)."""

import numpy as np
import pytest

from components.lib.feeders import batch_feeder, loss_weights, tensor_feeder


@pytest.fixture
def arrays(tmp_path):
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((10, 4, 4, 1), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(10) % 3)
    return np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")


def epoch_images(feeder) -> list[int]:
    return [int(v) for i in range(len(feeder)) for v in feeder[i][0][:, 0, 0, 0]]


def test_batches_are_float_images_and_one_hot_labels_covering_every_image_once(arrays):
    x, y = arrays
    feeder = batch_feeder(x, y, 4, 3, shuffle=True, seed=5)
    assert len(feeder) == 3
    images, labels = feeder[0]
    assert images.dtype == np.float32 and images.shape == (4, 4, 4, 1)
    assert labels.shape == (4, 3) and np.array_equal(labels.argmax(1), images[:, 0, 0, 0].astype(int) % 3)
    assert sorted(epoch_images(feeder)) == list(range(10))
    assert feeder[2][0].shape[0] == 2  # the last, partial batch


def test_shuffle_order_depends_only_on_seed_and_epoch(arrays):
    x, y = arrays
    fresh = batch_feeder(x, y, 4, 3, shuffle=True, seed=5)
    first = epoch_images(fresh)
    fresh.on_epoch_end()
    second = epoch_images(fresh)
    assert first != second
    resumed = batch_feeder(x, y, 4, 3, shuffle=True, seed=5, first_epoch=1)  # a run resumed at epoch 1
    assert epoch_images(resumed) == second
    assert epoch_images(batch_feeder(x, y, 4, 3, shuffle=False, seed=5)) == list(range(10))


def test_empty_split_refused(arrays):
    with pytest.raises(ValueError, match="empty"):
        batch_feeder(arrays[0][:0], arrays[1][:0], 4, 3, shuffle=True, seed=0)


def test_feeder_carries_loss_weights_beside_each_batch(arrays):
    x, y = arrays
    weights = np.arange(10, dtype="float32") / 10
    images, _, batch_weights = batch_feeder(x, y, 4, 3, shuffle=True, seed=5, weights=weights)[0]
    assert np.allclose(batch_weights, images[:, 0, 0, 0] / 10)


def test_class_weights_give_every_class_the_same_total():
    y = np.array([0] * 6 + [1] * 3 + [2])
    weights = loss_weights(y, 4, "class")
    totals = [weights[y == c].sum() for c in range(3)]
    assert np.allclose(totals, len(y) / 3) and np.isclose(weights.mean(), 1.0)
    assert weights[9] > weights[0]  # the rare class's image counts more
    assert loss_weights(y, 4, "none") is None


def test_group_weights_stop_a_long_series_outvoting_short_ones():
    y = np.zeros(10, dtype=int)
    groups = np.array(["long"] * 9 + ["short"])
    weights = loss_weights(y, 1, "class_and_group", groups)
    assert np.isclose(weights.sum(), 10)
    assert np.isclose(weights[groups == "long"].sum() / weights[groups == "short"].sum(), 3.0)  # sqrt(9) : 1
    with pytest.raises(ValueError, match="groups"):
        loss_weights(y, 1, "class_and_group")


def test_weighted_sampling_draws_rare_images_as_often_as_common_ones(arrays):
    x, y = arrays
    weights = loss_weights(np.asarray(y), 3, "class")
    feeder = batch_feeder(x, y, 50, 3, shuffle=True, seed=1, weights=weights, sample_by_weight=True, epoch_images=3000)
    assert len(feeder) == 60
    batches = [feeder[i] for i in range(len(feeder))]
    assert all(len(b) == 2 for b in batches)  # the draw does the balancing: no loss weights on top
    labels = np.concatenate([b[1].argmax(1) for b in batches])
    shares = np.bincount(labels, minlength=3) / len(labels)
    assert np.allclose(shares, 1 / 3, atol=0.04)  # y holds 4, 3 and 3 images of the classes


def test_epoch_images_shortens_or_lengthens_a_plain_shuffled_epoch(arrays):
    x, y = arrays
    assert sorted(epoch_images(batch_feeder(x, y, 5, 3, shuffle=True, seed=2, epoch_images=20))) == sorted(
        list(range(10)) * 2)
    assert len(batch_feeder(x, y, 2, 3, shuffle=True, seed=2, epoch_images=4)) == 2
    assert epoch_images(batch_feeder(x, y, 5, 3, shuffle=False, seed=2, epoch_images=12)) == [*range(10), 0, 1]


def pydataset_epochs(feeder, epochs: int) -> list[list]:
    out = []
    for _ in range(epochs):
        out.append([feeder[i] for i in range(len(feeder))])
        feeder.on_epoch_end()
    return out


@pytest.mark.parametrize("options", [
    {}, {"weights": np.linspace(0.1, 1, 10, dtype="float32")},
    {"weights": np.linspace(0.1, 1, 10, dtype="float32"), "sample_by_weight": True, "epoch_images": 14},
    {"epoch_images": 7}])
def test_tf_data_feeder_gives_the_memmap_feeders_batches_in_the_same_order(arrays, options):
    x, y = arrays
    dataset, steps = tensor_feeder(x, y, 4, 3, shuffle=True, seed=5, first_epoch=1, last_epoch=4, **options)
    expected = pydataset_epochs(batch_feeder(x, y, 4, 3, shuffle=True, seed=5, first_epoch=1, **options), 3)
    got = [tuple(part.numpy() for part in batch) for batch in dataset]
    assert steps == len(expected[0]) and len(got) == 3 * steps  # epochs 1, 2, 3 of a run resumed after epoch 1
    for mine, theirs in zip(got, [batch for epoch in expected for batch in epoch], strict=True):
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    validation, _ = tensor_feeder(x, y, 4, 3, shuffle=False, seed=5)
    assert [int(v) for batch in validation for v in batch[0].numpy()[:, 0, 0, 0]] == list(range(10))
    with pytest.raises(ValueError, match="empty"):
        tensor_feeder(x[:0], y[:0], 4, 3, shuffle=True, seed=0)
