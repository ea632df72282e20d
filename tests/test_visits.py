"""Visit assignment from dosing dates, time points and overrides; enrolment CSV errors."""

from __future__ import annotations

import hashlib
import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from conftest import need_data

from mri_safety.config import load_visit_windows
from mri_safety.dicom.series import load_series_dir
from mri_safety.visits import (
    Enrolment,
    EnrolmentError,
    StudyInfo,
    VisitAmbiguityError,
    VisitAssignment,
    assign_visits,
    read_enrolment,
    studies_from_groups,
)

DOSING = date(2024, 1, 10)
WINDOWS = load_visit_windows()
BIDS = re.compile(r"^[A-Za-z0-9]+$")


def study(day: int | None, name: str, pid: str = "P1", tp: str = "", uid: str = "") -> StudyInfo:
    d = "" if day is None else (DOSING + timedelta(days=day)).strftime("%Y%m%d")
    uid = uid or "1.2." + str(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    return StudyInfo(pid, uid, d, tp, name)


def run(studies: list[StudyInfo], enrol: dict[str, Enrolment] | None = None,
        **window_changes: object) -> dict[str, VisitAssignment]:
    windows = WINDOWS.model_copy(update=window_changes) if window_changes else WINDOWS
    if enrol is None:
        enrol = {"P1": Enrolment("P1", DOSING)}
    out = assign_visits(studies, enrol or None, windows)
    assert all(BIDS.match(a.label) for a in out.values())
    return {s.display_name: out[s.study_instance_uid] for s in studies}


def test_windows_from_dosing_date() -> None:
    days = {"pre": -5, "d1": 1, "m2": 61, "m4": 125, "m6": 175, "m12": 400}
    out = run([study(d, n) for n, d in days.items()])
    assert {n: (a.label, a.days_from_dosing, a.source) for n, a in out.items()} == {
        "pre": ("baseline", -5, "baseline"), "d1": ("24h", 1, "window"),
        "m2": ("M2", 61, "window"), "m4": ("M4", 125, "window"),
        "m6": ("M6", 175, "window"), "m12": ("M12", 400, "window"),
    }
    assert all(not a.warnings for a in out.values())


def test_window_edges_are_inclusive() -> None:
    out = run([study(46, "a"), study(74 + 1, "b"), study(99, "c")])
    assert (out["a"].label, out["b"].label, out["c"].label) == ("M2", "unscheduledDay75", "M4")


def test_baseline_is_last_pre_dose_study() -> None:
    out = run([study(-40, "early"), study(-3, "late"), study(30, "mid")])
    assert out["late"].label == "baseline"
    assert out["early"].label == "unscheduledDayMinus40"
    assert any("earlier pre-dose study" in w for w in out["early"].warnings)
    assert out["mid"].label == "unscheduledDay30"
    assert any("outside every visit window" in w for w in out["mid"].warnings)


def test_baseline_too_early_and_day0() -> None:
    out = run([study(-120, "old"), study(0, "day0")])
    assert out["old"].label == "unscheduledDayMinus120"
    assert any("more than 90 days before dosing" in w for w in out["old"].warnings)
    assert out["day0"].label == "24h"  # day 0 is post-dose by default
    pre = run([study(-120, "old"), study(0, "day0")], day0_is_post_dose=False)
    assert pre["day0"].label == "baseline"


def test_two_studies_in_one_window_name_both() -> None:
    good = study(61, "other-patient-m2", pid="P2")
    studies = [study(-2, "base"), study(58, "scan-A"), study(63, "scan-B"), good]
    enrol = {"P1": Enrolment("P1", DOSING), "P2": Enrolment("P2", DOSING)}
    with pytest.raises(VisitAmbiguityError) as err:
        assign_visits(studies, enrol, WINDOWS)
    msg = str(err.value)
    assert "'scan-A'" in msg and "'scan-B'" in msg and "visit M2" in msg and "P1" in msg
    assert "base" not in msg.replace("add a visit override", "")
    # The other patient is still assigned.
    assert err.value.partial == {good.study_instance_uid: VisitAssignment("M2", 61, "window")}


def test_two_baselines_on_one_day_are_ambiguous() -> None:
    with pytest.raises(VisitAmbiguityError, match=r"'am'.*'pm'|'pm'.*'am'"):
        run([study(-1, "am"), study(-1, "pm"), study(-30, "earlier")])


def test_overrides_by_date_and_uid() -> None:
    a, b = study(-1, "am", uid="1.2.3.1"), study(-1, "pm", uid="1.2.3.2")
    late = study(90, "late")
    enrol = {"P1": Enrolment("P1", DOSING, overrides={
        "1.2.3.1": "screen", DOSING + timedelta(days=90): "M2"})}
    out = run([a, b, late], enrol)
    assert (out["am"].label, out["am"].source) == ("screen", "override")
    assert (out["pm"].label, out["pm"].source) == ("baseline", "baseline")
    assert (out["late"].label, out["late"].source, out["late"].days_from_dosing) == (
        "M2", "override", 90)


def test_time_point_ids() -> None:
    out = run([
        study(-2, "b", tp="Baseline"), study(60, "m2", tp="Month 2"),
        study(130, "v7", tp="V7"),  # unknown code: dates decide, with a warning
    ])
    assert (out["b"].label, out["b"].source) == ("baseline", "time_point")
    assert (out["m2"].label, out["m2"].source) == ("M2", "time_point")
    assert out["v7"].label == "M4" and out["v7"].source == "window"
    assert any("'V7' is not in time_point_aliases" in w for w in out["v7"].warnings)
    # Two studies with time point M2 conflict.
    ambiguous = [study(60, "m2", tp="Month 2"), study(100, "m2b", tp="M2")]
    with pytest.raises(VisitAmbiguityError, match="'m2'.*'m2b'"):
        run(ambiguous)


def test_time_point_off_window_is_warned() -> None:
    out = run([study(100, "x", tp="M2")])
    assert out["x"].label == "M2"
    assert any("day 100 is outside its window [46, 74]" in w for w in out["x"].warnings)


def test_explicit_label_wins_over_dates() -> None:
    out = run([study(55, "tp", tp="MONTH2"), study(60, "dated")])
    assert out["tp"].label == "M2" and out["dated"].label == "unscheduledDay60"
    assert any("already given explicitly" in w for w in out["dated"].warnings)


def test_no_enrolment_uses_time_points_or_order() -> None:
    out = run([study(-1, "b", tp="BL"), study(61, "m2", tp="MO2")], enrol={})
    assert (out["b"].label, out["b"].days_from_dosing) == ("baseline", None)
    assert out["m2"].label == "M2"
    ordered = run([study(200, "third"), study(-1, "first"), study(30, "second")], enrol={})
    assert [ordered[n].label for n in ("first", "second", "third")] == [
        "baseline", "followup1", "followup2"]
    assert all(a.source == "order" and "by date order" in a.warnings[0] for a in ordered.values())


def test_undated_study() -> None:
    out = run([study(None, "nodate"), study(-1, "b")])
    assert out["nodate"].label == "unscheduled1" and out["b"].label == "baseline"


# --------------------------------------------------------------------------- enrolment CSV


def test_read_enrolment(tmp_path: Path) -> None:
    p = tmp_path / "enrolment.csv"
    p.write_text(
        "patient_id,dosing_date,route,visit_overrides\n"
        "# comment line\n"
        "P001,2024-01-10,intrathecal,\n"
        "\n"
        "P002,20240115,,20240320=M2; 1.2.826.0.1.5=M4\n"
    )
    enr = read_enrolment(p)
    assert enr["P001"] == Enrolment("P001", date(2024, 1, 10), "intrathecal")
    assert enr["P001"].source == f"{p}:3"
    assert enr["P002"].overrides == {date(2024, 3, 20): "M2", "1.2.826.0.1.5": "M4"}
    minimal = tmp_path / "min.csv"
    minimal.write_text("patient_id,dosing_date\nP9,2023-12-31\n")
    assert read_enrolment(minimal)["P9"].dosing_date == date(2023, 12, 31)


def test_bad_enrolment_lines_are_all_reported(tmp_path: Path) -> None:
    p = tmp_path / "enrolment.csv"
    p.write_text(
        "patient_id,dosing_date,visit_overrides\n"
        "P1,2024-01-10,\n"
        "P2,2024-13-01,\n"
        "P1,2024-02-01,\n"
        "P3,2024-02-01,20240301:M2\n"
        "P4,2024-02-01,20240301=M-2\n"
        ",2024-02-01,\n"
        "P5,2024-02-01,x,extra\n"
    )
    with pytest.raises(EnrolmentError) as err:
        read_enrolment(p)
    lines = str(err.value).splitlines()
    assert lines == [
        f"{p}:3: bad date '2024-13-01' (expected YYYY-MM-DD or YYYYMMDD)",
        f"{p}:4: patient 'P1' already listed at {p}:2",
        f"{p}:5: bad visit override '20240301:M2' (expected KEY=LABEL)",
        f"{p}:6: visit label 'M-2' in '20240301=M-2' must be alphanumeric",
        f"{p}:7: empty patient_id",
        f"{p}:8: 4 fields, header has 3",
    ]


@pytest.mark.parametrize("text,expect", [
    ("", "empty enrolment file"),
    ("patient,dosing_date\nP1,2024-01-01\n", "missing ['patient_id'], unknown ['patient']"),
])
def test_bad_enrolment_header(tmp_path: Path, text: str, expect: str) -> None:
    p = tmp_path / "e.csv"
    p.write_text(text)
    with pytest.raises(EnrolmentError, match=re.escape(expect)) as err:
        read_enrolment(p)
    assert str(p) in str(err.value)
    with pytest.raises(EnrolmentError, match="cannot read"):
        read_enrolment(tmp_path / "absent.csv")


# --------------------------------------------------------------------------- real studies


def test_real_same_day_studies() -> None:
    """patient-positions: four real studies of one volunteer on one day. By date
    order they are ambiguous (error naming them); per-study overrides resolve it."""
    root = need_data("dicom", "patient-positions")
    studies = studies_from_groups(load_series_dir(root),
                                  display_name=lambda g: Path(g.source_dir).name)
    assert len(studies) == 4 and {s.patient_id for s in studies} == {"crlab"}
    with pytest.raises(VisitAmbiguityError) as err:
        assign_visits(studies, None, WINDOWS)
    assert all(f"'{n}'" in str(err.value) for n in ("HFS", "HFP", "HFDL", "HFDR"))
    labels = {"HFS": "baseline", "HFP": "M2", "HFDL": "M4", "HFDR": "M6"}
    enrol = {"crlab": Enrolment("crlab", date(2022, 4, 7), overrides={
        s.study_instance_uid: labels[s.display_name] for s in studies})}
    out = assign_visits(studies, enrol, WINDOWS)
    assert {s.display_name: (out[s.study_instance_uid].label,
                             out[s.study_instance_uid].days_from_dosing) for s in studies} == {
        n: (lbl, 0) for n, lbl in labels.items()}
