"""The process settings: threads from the affinity mask, the cgroup quota and torchrun's processes."""

from __future__ import annotations

import os

import pytest
import torch

from electra import runtime
from electra.errors import UserError


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtime.cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime.cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.cgroup_cpu_limit(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert runtime.cgroup_cpu_limit(tmp_path) is None


def test_threads_follow_affinity_quota_and_local_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda root=None: 2.5)
    assert runtime.usable_cpus() == 3  # a quota of 2.5 CPUs rounds up
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert runtime.default_threads() == 1
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda root=None: None)
    assert runtime.default_threads() == 4


def test_set_threads_flag_then_environment_then_default(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert runtime.set_threads(None) == 1 and torch.get_num_threads() == 1
        assert runtime.set_threads(2) == 2 and torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(runtime, "default_threads", lambda: 1)
        assert runtime.set_threads(None) == 1
        with pytest.raises(UserError, match="--threads must be positive"):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(before)
