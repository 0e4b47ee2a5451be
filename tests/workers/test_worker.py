"""`gateway.workers.worker`: the `--workers` value, the `--worker` spec, and a worker's own
audit chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.devtokens import DevKey
from gateway.workers import MAX_WORKERS, Worker, WorkersError, workers_count
from tests.support import config


@pytest.mark.parametrize("text", ["1", "2", "64", " 3 "])
def test_a_number_of_workers_from_one_to_the_maximum(text: str) -> None:
    assert workers_count(text) == int(text)


@pytest.mark.parametrize("text", ["0", "65", "-1", "two", "1.5", "", "1e2", "٣", "99999"])
def test_anything_else_is_refused_with_one_line(text: str) -> None:
    with pytest.raises(WorkersError) as refused:
        workers_count(text)
    assert str(refused.value) == (f"--workers: {text!r} is not a number of workers from 1 "
                                  f"to {MAX_WORKERS}")


def test_the_cli_refuses_a_bad_value_before_reading_the_config(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--workers", "0", "--config", str(tmp_path / "none.yaml")],
                {}) == 1
    assert capsys.readouterr().err == ("error: --workers: '0' is not a number of workers "
                                       "from 1 to 64\n")


def test_a_worker_spec_comes_from_the_supervisor_whole(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    assert main(["serve", "--worker", "1/2", "--config", str(tmp_path / "none.yaml")],
                {}) == 1
    assert "--worker is set by the supervisor" in capsys.readouterr().err
    with pytest.raises(WorkersError):
        Worker.parse("3/2", 1, 5)
    assert Worker.parse("2/3", 1, 5) == Worker(2, 3, 1, 5)


def test_each_worker_writes_its_own_chain_and_worker_one_the_configured_file(
        tmp_path: Path) -> None:
    settings = config(tmp_path, DevKey.generate(), "http://127.0.0.1:9")
    assert settings.audit.file is not None
    live = settings.audit.file
    one, two = Worker(1, 2, 1, 5), Worker(2, 2, 1, 5)
    assert one.settings(settings).audit.file == live
    assert two.settings(settings).audit.file == live.with_name("toolgate.w2.jsonl")
    assert two.settings(settings).audit.fsync is settings.audit.fsync
    assert one.serves_admin and not two.serves_admin
