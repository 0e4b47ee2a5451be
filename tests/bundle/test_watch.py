"""The file watch: what counts as a change (content, not timestamps; through a ConfigMap's
symlinks), which files are watched, and a reload that could not be recorded is tried again
rather than forgotten. (A real gateway reloading on a change: tests/e2e/test_reload.py.)"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from gateway.bundle.watch import fingerprint, watch, watched
from gateway.devtokens import DevKey
from gateway.runtime import Runtime
from tests.support import config, records, unwritable


def test_a_rewrite_of_the_same_size_and_time_is_a_change(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("max: 200\n")
    before = fingerprint([tmp_path])
    stat = data.stat()
    data.write_text("max: 100\n")
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint([tmp_path]) != before


def test_a_configmap_swap_through_its_symlinks_is_seen(tmp_path: Path) -> None:
    """A ConfigMap volume: files are links into `..data`, itself a link to a timestamped
    directory that an update replaces."""
    mount = tmp_path / "policies"
    first, second = mount / "..2026_01_01", mount / "..2026_01_02"
    for directory, text in ((first, "max: 200\n"), (second, "max: 100\n")):
        directory.mkdir(parents=True)
        (directory / "data.yaml").write_text(text)
    (mount / "..data").symlink_to(first.name)
    (mount / "data.yaml").symlink_to("..data/data.yaml")
    before = fingerprint([mount])
    (mount / "..data_tmp").symlink_to(second.name)
    (mount / "..data_tmp").replace(mount / "..data")
    assert fingerprint([mount]) != before


def test_beside_opa_only_the_specs_are_watched(tmp_path: Path, dev_key: DevKey) -> None:
    embedded = config(tmp_path, dev_key, "http://127.0.0.1:9")
    beside_opa = config(tmp_path, dev_key, "http://127.0.0.1:9", policy={"engine": "opa"})
    assert set(embedded.policies) <= set(watched(embedded))
    assert watched(beside_opa) == list(beside_opa.tool_specs)


async def test_a_reload_that_could_not_be_recorded_is_tried_again(
        live: tuple[Runtime, Path]) -> None:
    rt, policies = live
    paths = watched(rt.settings)
    task = asyncio.create_task(watch(rt.reloader, paths, 0.02, fingerprint(paths)))
    old = rt.bundles.current
    audit = rt.settings.audit.file
    assert audit is not None
    try:
        data = policies / "data.yaml"
        with unwritable(audit):
            data.write_text(data.read_text().replace("max: {USD: 200,", "max: {USD: 100,"))
            for _ in range(50):          # the watch sees it and fails to record it, often
                await asyncio.sleep(0.02)
            assert rt.bundles.current is old
        for _ in range(500):
            if rt.bundles.current is not old:
                break
            await asyncio.sleep(0.02)
        assert rt.bundles.current is not old, "the change was forgotten"
        # It did try while the log was down: the log says it refused a record then.
        [recovered] = [r for r in records(rt, audit_events=True)
                       if r["kind"] == "audit" and r["event"] == "recovered"]
        assert recovered["refused"] >= 1
        reloads = [r for r in records(rt) if r["kind"] == "policy_reload"]
        assert [(r["event"], r["trigger"]) for r in reloads] == [("accepted", "watch")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
