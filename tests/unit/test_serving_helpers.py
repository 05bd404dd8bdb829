"""Serving helpers: the micro-batcher, the settings from env, the size bounds and the bearer token."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serving.batching import MicroBatcher, size_buckets
from serving.config import load_config, study_cost_s, study_refusal
from serving.inputs import RejectedUpload, check_size, check_token
from tests.fixtures import png_bytes


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    def slow_double(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.02)
        return batch * 2

    sizes: list[int] = []
    batcher = MicroBatcher(slow_double, max_batch_size=4, max_latency_ms=5, observe=sizes.append)

    async def many():
        return await asyncio.gather(*[batcher.submit(np.array([i])) for i in range(10)])

    results = asyncio.run(many())
    assert [int(r[0]) for r in results] == [2 * i for i in range(10)]
    assert max(sizes) == 4 and sum(sizes) == 10 and len(sizes) < 10
    assert not any(isinstance(v, list) for v in vars(batcher).values())  # no per-batch record kept (it leaked)


def test_batch_sizes_land_in_a_bounded_prometheus_histogram():
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    histogram = Histogram("sizes", "test", buckets=size_buckets(32), registry=registry)
    assert size_buckets(32) == [1, 2, 4, 8, 16, 32] and size_buckets(12) == [1, 2, 4, 8, 12] and size_buckets(1) == [1]
    batcher = MicroBatcher(lambda batch: batch, max_batch_size=32, max_latency_ms=5, observe=histogram.observe)

    async def rounds():
        for _ in range(50):
            await asyncio.gather(*[batcher.submit(np.zeros(1)) for _ in range(3)])

    asyncio.run(rounds())
    assert registry.get_sample_value("sizes_count") == 50 and registry.get_sample_value("sizes_sum") == 150
    assert registry.get_sample_value("sizes_bucket", {"le": "2.0"}) == 0
    assert registry.get_sample_value("sizes_bucket", {"le": "4.0"}) == 50


def test_a_failing_model_call_reaches_every_caller_and_the_batcher_keeps_working():
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return batch

    batcher = MicroBatcher(flaky, max_batch_size=8, max_latency_ms=20)

    async def scenario():
        first = await asyncio.gather(batcher.submit(np.zeros(1)), batcher.submit(np.zeros(1)), return_exceptions=True)
        return first, await batcher.submit(np.ones(1))

    first, after = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in first) and after[0] == 1


def test_settings_come_from_env_and_bad_values_are_named():
    config = load_config({"KIDNEY_CT_BATCHING": "off", "KIDNEY_CT_MAX_BATCH_SIZE": "8", "KIDNEY_CT_MAX_PIXELS": "100"})
    assert not config.batching and config.max_batch_size == 8 and config.max_pixels == 100
    assert load_config({}).batching
    with pytest.raises(ValueError, match="KIDNEY_CT_MAX_BATCH_SIZE='lots'"):
        load_config({"KIDNEY_CT_MAX_BATCH_SIZE": "lots"})
    with pytest.raises(ValueError, match="invalid serving settings"):
        load_config({"KIDNEY_CT_MAX_BATCH_SIZE": "0"})
    assert load_config({}).max_series_files == 1000
    assert not load_config({}).clinical_use and load_config({"KIDNEY_CT_CLINICAL_USE": "true"}).clinical_use


def test_the_study_pooling_is_the_models_and_env_cannot_override_it():
    from serving.config import certified_pooling

    assert certified_pooling({"series_pooling": "gem"}, {}) == "gem"
    assert certified_pooling({}, {}) == "mean"  # a Bento packaged before the pooling was part of the contract
    assert certified_pooling({"series_pooling": "gem"}, {"KIDNEY_CT_SERIES_POOLING": "gem"}) == "gem"
    with pytest.raises(ValueError, match="KIDNEY_CT_SERIES_POOLING='max', but the model was certified with 'gem'"):
        certified_pooling({"series_pooling": "gem"}, {"KIDNEY_CT_SERIES_POOLING": "max"})
    with pytest.raises(ValueError, match="not one of"):
        certified_pooling({"series_pooling": "median"}, {})


def test_size_bounds_say_413_with_the_limit():
    image = png_bytes(np.zeros((20, 20), np.uint8))
    check_size(image, max_bytes=10_000, max_pixels=400)
    with pytest.raises(RejectedUpload, match="at most 399 pixels") as pixels:
        check_size(image, max_bytes=10_000, max_pixels=399)
    with pytest.raises(RejectedUpload, match="MB per slice") as size:
        check_size(image, max_bytes=10, max_pixels=400)
    assert pixels.value.status == size.value.status == 413
    check_size(b"not an image", max_bytes=100, max_pixels=1)  # unreadable headers are left to the decoder


def test_token_is_required_only_when_configured():
    check_token(None, None)
    check_token("s3cret", "Bearer s3cret")
    for header in (None, "Bearer nope", "Basic s3cret", "s3cret"):
        with pytest.raises(RejectedUpload, match="Authorization: Bearer") as refused:
            check_token("s3cret", header)
        assert refused.value.status == 401


def test_a_study_past_the_request_timeout_is_refused_up_front_with_what_would_fit():
    assert study_cost_s(300, 3, 0.1, 0.8) == pytest.approx(32.4)
    assert study_refusal(100, 3, 0.1, 0.8, timeout_s=120) is None  # 12.4 s: well inside
    why = study_refusal(300, 3, 0.5, 0.8, timeout_s=120)  # 152 s
    assert why is not None and "300 slices needs about 152 s" in why and "at most 187 slices" in why
    assert "components.predict" in why
    assert load_config({"KIDNEY_CT_REQUEST_TIMEOUT_S": "45"}).request_timeout_s == 45.0
    with pytest.raises(ValueError):
        load_config({"KIDNEY_CT_REQUEST_TIMEOUT_S": "0"})


def test_the_study_bench_compares_served_with_in_process_on_the_runtime_the_service_uses(tmp_path):
    import zipfile

    from serving.study_bench import served_ratios, zipped

    runs = [{"runtime": "tensorflow", "slices": 100, "p50_s": 10.0}, {"runtime": "openvino-f32", "slices": 100,
                                                                       "p50_s": 8.0}]
    served = {"runtime": "openvino", "sizes": {100: {"p50_s": 10.0}, 300: {"p50_s": 30.0}}}
    assert served_ratios(runs, served) == {100: 1.25}  # openvino is the f32 form; no in-process 300 to compare
    assert served_ratios(runs, served | {"runtime": "tensorflow"}) == {100: 1.0}
    int8 = runs + [{"runtime": "openvino-int8", "slices": 100, "p50_s": 4.0}]
    assert served_ratios(int8, served | {"precision": "int8"}) == {100: 2.5}  # against the same precision in process
    files = [tmp_path / f"s{i}.jpg" for i in range(3)]
    for i, file in enumerate(files):
        file.write_bytes(bytes([i]) * 10)
    import io

    names = zipfile.ZipFile(io.BytesIO(zipped(files))).namelist()
    assert names == ["study/0000.jpg", "study/0001.jpg", "study/0002.jpg"]  # one series folder, order kept
