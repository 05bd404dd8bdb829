"""The adaptation benchmark's pieces (`make bench-adapt`): poolings of cached maps and augmentation of them."""

import numpy as np

from components.backbone.bench import augment_maps, layer3_pools


def test_gem_of_a_cached_map_lies_between_its_mean_and_its_max():
    maps = np.random.default_rng(0).random((3, 4, 4, 5)).astype("float16")
    pools = layer3_pools(maps, block=2)
    assert np.allclose(pools["mean"], maps.astype("float32").mean((1, 2)), atol=1e-6)
    assert np.all(pools["mean"] <= pools["gem"] + 1e-6) and np.all(pools["gem"] <= pools["max"] + 1e-6)


def test_map_augmentation_flips_or_shifts_without_changing_what_is_in_the_map():
    maps = np.random.default_rng(1).random((8, 6, 6, 3)).astype("float32")
    out = augment_maps(maps.copy(), np.random.default_rng(2))
    assert out.shape == maps.shape and not np.allclose(out, maps)
    assert np.allclose(np.sort(out.reshape(8, -1), axis=1), np.sort(maps.reshape(8, -1), axis=1))
