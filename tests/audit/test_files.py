"""Where a chain's records live: rotated names sort in order, a live file stands for its
whole family, and a directory's files are told apart by the chain they belong to."""

from __future__ import annotations

from pathlib import Path

from gateway.audit.files import chains, expand, family, rotated_name


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
