"""Where a chain's records live: rotated names sort in order, a live file stands for its
whole family, and a directory's files are told apart by the chain they belong to."""

from __future__ import annotations

from pathlib import Path

from gateway.audit.files import (
    chains,
    expand,
    family,
    rotated_name,
    worker_chains,
    worker_file,
)


def test_rotated_names_sort_in_time_order_and_keep_the_stem(tmp_path: Path) -> None:
    live = tmp_path / "toolgate.jsonl"
    names = [rotated_name(live, t) for t in (1_700_000_000.5, 1_700_000_000.25, 1_800_000_000)]
    assert all(n.name.startswith("toolgate.") and n.suffix == ".jsonl" for n in names)
    assert sorted(names) == [names[1], names[0], names[2]]


def test_family_is_rotated_files_oldest_first_then_the_live_file(tmp_path: Path) -> None:
    live = tmp_path / "toolgate.jsonl"
    assert family(live) == []
    rotated = [rotated_name(live, t) for t in (2_000_000_000, 1_000_000_000)]
    for path in [*rotated, live, tmp_path / "other.jsonl", tmp_path / "toolgate.jsonl.bak"]:
        path.write_text("")
    assert family(live) == [rotated[1], rotated[0], live]


def test_expand_and_chains(tmp_path: Path) -> None:
    one, two = tmp_path / "toolgate.jsonl", tmp_path / "worker-2.jsonl"
    files = [rotated_name(one, 1_000_000_000), one, rotated_name(two, 1_000_000_000), two]
    for path in files:
        path.write_text("")
    assert expand([one]) == files[:2]
    assert expand([one, one, files[0]]) == files[:2]
    assert sorted(expand([tmp_path])) == sorted(files)
    assert chains(expand([tmp_path])) == {one: files[:2], two: files[2:]}


def test_worker_files_keep_worker_one_on_the_live_file(tmp_path: Path) -> None:
    """`--workers N`: worker 1 writes `audit.file` itself (one worker is the one process),
    worker i `<stem>.w<i><suffix>`; rotated, each keeps its own stem."""
    live = tmp_path / "toolgate.jsonl"
    assert worker_file(live, 1) == live
    assert worker_file(live, 2) == tmp_path / "toolgate.w2.jsonl"
    assert worker_file(live, 12).name == "toolgate.w12.jsonl"
    rotated = rotated_name(worker_file(live, 2), 1_000_000_000)
    assert rotated.name.startswith("toolgate.w2.2001")
    # Each chain's family is its own: worker 1's does not take in worker 2's files.
    for path in [live, worker_file(live, 2), rotated]:
        path.write_text("")
    assert family(live) == [live]
    assert family(worker_file(live, 2)) == [rotated, worker_file(live, 2)]
    assert chains(expand([tmp_path])) == {live: [live],
                                          worker_file(live, 2): [rotated, worker_file(live, 2)]}


def test_worker_chains_are_found_whichever_workers_still_run(tmp_path: Path) -> None:
    """A chain counts while any of its files is on disk: a worker no longer started (a
    smaller N), or one whose live file was rotated out and not yet written again."""
    live = tmp_path / "toolgate.jsonl"
    assert worker_chains(live) == [live]
    assert worker_chains(tmp_path / "absent" / "toolgate.jsonl") == [
        tmp_path / "absent" / "toolgate.jsonl"]
    rotated_only = rotated_name(worker_file(live, 10), 1_000_000_000)
    for path in [worker_file(live, 3), rotated_only, tmp_path / "toolgate.w0.jsonl",
                 tmp_path / "toolgate.w1.jsonl", tmp_path / "toolgate.wx.jsonl",
                 tmp_path / "other.w2.jsonl", tmp_path / "toolgate.w2.jsonl.bak"]:
        path.write_text("")
    assert worker_chains(live) == [live, worker_file(live, 3), worker_file(live, 10)]
