"""The oneDNN instruction-set cap: the user's choice wins, auto measures once per machine and caches."""
from __future__ import annotations

import json
import os

import pytest

from mindcv_mnv2.ops import cpu_isa

AVX512 = ["fpu", "sse4_1", "avx", "avx2", "avx512f", "avx512bw"]
AVX2 = ["fpu", "sse4_1", "avx", "avx2", "fma"]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No ONEDNN_MAX_CPU_ISA, a private cache, and the process's own setting restored afterwards."""
    monkeypatch.delenv(cpu_isa.ENV, raising=False)
    monkeypatch.setattr(cpu_isa, "_USER_ENV", None)  # as if the process had started without it
    monkeypatch.setenv("MINDCV_MNV2_CACHE", str(tmp_path / "cache"))
    yield monkeypatch
    os.environ.pop(cpu_isa.ENV, None)  # monkeypatch puts back the original value, if there was one


def test_candidates_by_cpu():
    assert cpu_isa.candidates(AVX512) == ["DEFAULT", "AVX2"]
    assert cpu_isa.candidates(AVX2) == ["DEFAULT"]  # capping an AVX2 CPU lower is never faster
    assert cpu_isa.candidates([]) == ["DEFAULT"]


def test_child_environment_carries_exactly_the_cap(clean_env):
    """Probe and bench children run under the cap asked for, not under one left in this process's environment."""
    clean_env.setenv(cpu_isa.ENV, "SSE41")
    clean_env.setenv("MNV2_MARKER", "kept")
    assert cpu_isa.ENV not in cpu_isa.environ_for("DEFAULT")
    env = cpu_isa.environ_for("AVX2")
    assert env[cpu_isa.ENV] == "AVX2" and env["MNV2_MARKER"] == "kept"
    assert os.environ[cpu_isa.ENV] == "SSE41"  # this process's own setting is left alone


def test_environment_wins_over_recipe_and_auto(clean_env):
    clean_env.setattr(cpu_isa, "_USER_ENV", "SSE41")  # what the process started with
    for setting in ("auto", "AVX2"):
        d = cpu_isa.choose(setting)
        assert d.cap == "SSE41" and "from the environment" in d.reason
        assert os.environ[cpu_isa.ENV] == "SSE41"


def test_recipe_value_is_applied(clean_env):
    d = cpu_isa.choose("AVX2")
    assert (d.cap, os.environ[cpu_isa.ENV]) == ("AVX2", "AVX2") and "recipe" in d.reason
    d = cpu_isa.choose("DEFAULT")
    assert d.cap == "DEFAULT" and cpu_isa.ENV not in os.environ
    with pytest.raises(ValueError, match="cpu_isa must be one of"):
        cpu_isa.choose("AVX9000")


def test_auto_on_avx2_measures_nothing(clean_env):
    clean_env.setattr(cpu_isa, "cpu_flags", lambda: AVX2)
    clean_env.setattr(cpu_isa, "probe", lambda cap: pytest.fail("nothing to measure on AVX2"))
    d = cpu_isa.choose("auto")
    assert d.cap == "DEFAULT" and cpu_isa.ENV not in os.environ and "no wider instruction set" in d.reason


def test_auto_on_avx512_measures_once_picks_the_fastest_and_caches(clean_env, tmp_path):
    calls = []

    def fake_probe(cap):
        calls.append(cap)
        return {"DEFAULT": 12.0, "AVX2": 5.0}[cap]  # the AVX-512 machine of the issue: AVX2 much faster

    clean_env.setattr(cpu_isa, "cpu_flags", lambda: AVX512)
    clean_env.setattr(cpu_isa, "probe", fake_probe)
    d = cpu_isa.choose("auto")
    assert d.cap == "AVX2" and os.environ[cpu_isa.ENV] == "AVX2" and calls == ["DEFAULT", "AVX2"]
    assert "DEFAULT 12.0 ms, AVX2 5.0 ms" in d.reason
    cached = json.loads(next((tmp_path / "cache").glob("cpu_isa_*.json")).read_text())
    assert cached["cap"] == "AVX2" and cached["ms"] == {"DEFAULT": 12.0, "AVX2": 5.0}
    os.environ.pop(cpu_isa.ENV)
    again = cpu_isa.choose("auto")  # a later run on this machine: from the cache, nothing measured
    assert again.cap == "AVX2" and calls == ["DEFAULT", "AVX2"] and "cached in" in again.reason
    assert "capped at AVX2" in cpu_isa.describe()


def test_choice_cached_by_an_older_probe_is_measured_again(clean_env, tmp_path):
    """A cache written before the probe changed (version 1 had no stem and chose wrongly on a Zen 5
    EPYC) must not be trusted: the new probe runs and its choice replaces the old one."""
    calls = []
    clean_env.setattr(cpu_isa, "cpu_flags", lambda: AVX512)
    clean_env.setattr(cpu_isa, "probe", lambda cap: calls.append(cap) or {"DEFAULT": 90.0, "AVX2": 38.0}[cap])
    path = cpu_isa._cache_file()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"cap": "DEFAULT", "ms": {"DEFAULT": 23.4, "AVX2": 23.6},
                                "signature": cpu_isa._cpu_signature()}))  # version 1: no "probe" field
    d = cpu_isa.choose("auto")
    assert d.cap == "AVX2" and calls == ["DEFAULT", "AVX2"] and "cached in" in d.reason
    assert json.loads(path.read_text())["probe"] == cpu_isa.PROBE_VERSION


def test_failed_probes_fall_back_to_no_cap(clean_env):
    def broken(cap):
        raise RuntimeError("the probe failed")

    clean_env.setattr(cpu_isa, "cpu_flags", lambda: AVX512)
    clean_env.setattr(cpu_isa, "probe", broken)
    d = cpu_isa.choose("auto")
    assert d.cap == "DEFAULT" and cpu_isa.ENV not in os.environ and "could not run" in d.reason


@pytest.mark.slow
def test_probe_runs_under_a_cap():
    """The real probe (a child process per cap): positive timings, the capped one no faster than
    this CPU's own choice by more than noise (Zen 5 EPYC: DEFAULT 85-101 ms, AVX2 35-39, SSE41 50)."""
    default, sse = cpu_isa.probe("DEFAULT"), cpu_isa.probe("SSE41")
    assert default > 0 and sse > 0
