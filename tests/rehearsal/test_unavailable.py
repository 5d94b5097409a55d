"""Where the rehearsal cannot run, it says why (the rehearsal tests skip with that reason)."""

from __future__ import annotations

import pytest

from lepton_infra.rehearsal import network, rootfs, session


def test_without_root_the_reason_names_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network.os, "geteuid", lambda: 1000)
    reason = session.unavailable()
    assert reason is not None and "root" in reason


def test_without_nspawn_the_reason_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        rootfs.shutil, "which", lambda tool: None if tool == "systemd-nspawn" else "/usr/bin/x"
    )
    reason = rootfs.unavailable()
    assert reason is not None and "systemd-container" in reason and "make setup" in reason
