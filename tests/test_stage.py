"""raxnet.stage: every stage run leaves its log and keeps the run report current."""

import pytest

from raxnet.config import stage_dir
from raxnet.errors import StageInputError
from raxnet.log import get_logger
from raxnet.report import REPORT_NAME
from raxnet.stage import stage_run

log = get_logger("raxnet.test_stage")


@stage_run("split")
def _split(cfg, run, *, value=1):
    log.info("split value %d", value)
    rows = "".join(f"h{i},holdout\n" for i in range(value))  # `value` hold-out subjects
    (stage_dir(run["work_dir"], "split") / "split.csv").write_text("subject,set\na,train\n" + rows)
    return {"value": value}


@stage_run("fusion")
def _fusion(cfg, run):
    log.info("fused")
    return {}


@stage_run("model")
def _failing(cfg, run):
    raise StageInputError("01_dataset/subjects.csv: not found")


def test_stage_run_writes_log_and_report(tmp_path):
    run = {"work_dir": str(tmp_path)}
    assert _split({}, run, value=7) == {"value": 7}
    assert "split value 7" in (tmp_path / "02_data_splitting" / "log.txt").read_text()
    assert not (tmp_path / REPORT_NAME).exists()  # only stage 08 creates the report
    _fusion({}, run)
    report = tmp_path / REPORT_NAME
    assert report.is_file() and "run report" in (tmp_path / "08_fusion" / "log.txt").read_text()
    card = '<div class="v">{}</div><div class="k">hold-out subjects</div>'
    assert card.format(7) in report.read_text()
    _split({}, run, value=2)  # any later stage run refreshes the existing report
    assert card.format(2) in report.read_text()


def test_failed_stage_leaves_no_folder(tmp_path):
    with pytest.raises(StageInputError):
        _failing({}, {"work_dir": str(tmp_path)})
    assert not (tmp_path / "06_model").exists()
