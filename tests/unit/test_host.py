"""components.lib.host: the host line every benchmark prints beside its timings."""

from __future__ import annotations

from components.lib.host import host_line


def test_the_host_line_names_cores_and_avx512_and_says_when_onednn_is_capped(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    plain = host_line()
    assert " cores, " in plain and "AVX-512: " in plain and "oneDNN" not in plain
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert host_line() == f"{plain} (oneDNN limited to AVX2)"
