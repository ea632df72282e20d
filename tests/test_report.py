"""Visit reports, safety table and index.

(a) fast: rendering from constructed visit summaries and a constructed run
    folder (the rule of the safety table, decisions file, deviations, zero
    candidates, escaping, no external URLs, no PHI);
(b) slow: a synthetic one-patient trial with a protocol deviation introduced in
    a follow-up (FLAIR EchoTime rewritten in the DICOM headers), run through
    the pipeline: the deviation is in the report, no SYNTHPHI byte under
    reports/, every picture exists;
(c) slow: that report opened in headless Chromium (Debian package,
    installed by scripts/test.sh): screenshot, every image loads, no request
    leaves file://.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import small_synthetic_trial

from mri_safety.report import (
    build_visit_context,
    latest_decisions,
    load_decisions,
    new_finding,
    render_index,
    render_safety_table,
    render_visit_report,
    safety_csv,
    safety_rows,
)
from mri_safety.report.context import ZERO_CANDIDATES
from mri_safety.report.decisions import FORMAT

SUBJ = "ABCDEF123"


def _series(contrast, region="brain", output=None, status="converted", verdict="usable",
            visit="baseline"):
    out = output if output is not None else (
        f"sub-{SUBJ}/ses-{visit}/anat/sub-{SUBJ}_ses-{visit}_acq-{region}2d_{contrast}.nii.gz")
    return {"output": out if status == "converted" else "",
            "source": f"/data/export/SYNTHPHI-DOE-JOHN/{visit}/02_{contrast}",
            "status": status, "qc_verdict": verdict if status == "converted" else None,
            "qc_reasons": [], "qc_manifest": None, "region": region, "contrast": contrast,
            "post_contrast": False,
            "errors": [] if status == "converted" else
            [f"/data/export/SYNTHPHI-DOE-JOHN/{visit}/02_{contrast}/IM0004.dcm: truncated"]}


def _comparison(visit, ref="baseline", candidates=(), deviations=(), evidence=None):
    return {"subject": SUBJ, "visit": visit, "reference_visit": ref, "kind":
            "baseline" if ref == "baseline" else "previous", "region": "brain",
            "contrast": "flair",
            "baseline_name": f"sub-{SUBJ}/ses-{ref}/anat/x_FLAIR.nii.gz",
            "followup_name": f"sub-{SUBJ}/ses-{visit}/anat/y_FLAIR.nii.gz", "error": "",
            "protocol_deviations": list(deviations), "protocol_confidence": 0.7,
            "evidence": evidence, "manifest": "work/detect/abc/manifest.json",
            "registration": {"status": "ok", "quality": 0.95,
                             "residual_misregistration_mm": 0.3, "method": "rigid"},
            "candidates": list(candidates)}


def _cand(i, flagged=True, ctype="new_t2_hyperintensity"):
    return {"id": i, "type": ctype, "flagged": flagged, "volume_mm3": 120.0,
            "location": {"region": "brain", "side": "left", "tissue": "wm",
                         "depth_from_brain_surface_mm": 20.0},
            "peak_z": 9.5, "score": 0.9, "reasons": ["peak z 9.5 vs review threshold 4.4"],
            "centroid_ras_mm": [1.0, 2.0, 3.0]}


TE = {"field": "EchoTime", "baseline": 85.0, "followup": 136.0, "unit": "ms",
      "severity": "major", "note": ""}
THK = {"field": "SliceThickness", "baseline": 1.0, "followup": 3.0, "unit": "mm",
       "severity": "major", "note": ""}


def _visits():
    base = {"subject": SUBJ, "visit": "baseline", "days_from_dosing": -7, "status": "baseline",
            "n_flagged": 0, "not_assessable": [], "comparisons": [],
            "series": [_series("FLAIR"), _series("T2w", "cervical")]}
    zero = {"subject": SUBJ, "visit": "24h", "days_from_dosing": 1, "n_flagged": 0,
            "status": "no candidates flagged: full read and sign-off still needed",
            "not_assessable": [], "series": [_series("FLAIR", visit="24h")],
            "comparisons": [_comparison("24h", deviations=[THK, TE],
                                        candidates=[_cand(1, flagged=False)])]}
    flagged = {"subject": SUBJ, "visit": "M2", "days_from_dosing": 61, "n_flagged": 2,
               "status": "candidates flagged", "not_assessable": [],
               "series": [_series("FLAIR", visit="M2")],
               "comparisons": [_comparison("M2", candidates=[_cand(1), _cand(2)],
                                           evidence="work/evidence/e1")]}
    na = {"subject": SUBJ, "visit": "M4", "days_from_dosing": 122, "n_flagged": 0,
          "status": "not assessable", "not_assessable": [
              "/data/export/SYNTHPHI-DOE-JOHN/M4/02_FLAIR"],
          "series": [_series("FLAIR", status="failed", visit="M4")], "comparisons": []}
    return [base, zero, flagged, na]


def _decisions(*items):
    return {"format": FORMAT, "decisions": [
        {"subject": SUBJ, "visit": v, "decision": d, "reviewer": r, "time": t,
         "finding_ids": f} for v, d, r, t, f in items]}


# --------------------------------------------------------------------------- (a) fast


def test_zero_candidate_visit_says_full_read_and_sign_off():
    html = render_visit_report(build_visit_context(_visits()[1]))
    assert ZERO_CANDIDATES in html
    assert "Full read and sign-off needed" in html
    assert "Pending: no reviewer decision" in html
    # also for a visit with candidates, and not for the baseline
    html2 = render_visit_report(build_visit_context(_visits()[2]))
    assert "Full read and sign-off needed" in html2 and ZERO_CANDIDATES not in html2
    assert "Baseline visit" in render_visit_report(build_visit_context(_visits()[0]))


def _table_rows(html: str, table_id: str) -> list[list[str]]:
    block = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert block, f"no table {table_id}"
    rows = re.findall(r"<tr>(.*?)</tr>", block.group(1), re.S)
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>",
                                                                    r, re.S)] for r in rows]


def test_protocol_deviation_rows_show_both_values():
    html = render_visit_report(build_visit_context(_visits()[1]))
    rows = _table_rows(html, "deviations")
    assert rows[0][:6] == ["comparison", "field", "reference value", "this visit", "unit",
                           "severity"]
    by_field = {r[1]: r for r in rows[1:]}
    assert by_field["SliceThickness"][2:6] == ["1", "3", "mm", "major"]
    assert by_field["EchoTime"][2:6] == ["85", "136", "ms", "major"]
    assert by_field["EchoTime"][0] == "brain flair vs baseline"


def test_candidates_montages_and_finding_ids():
    v = _visits()[2]
    images = {"work/evidence/e1/candidate-1.png": "assets/e1/candidate-1.png"}
    html = render_visit_report(build_visit_context(v, images=images))
    assert 'src="assets/e1/candidate-1.png"' in html
    assert "brain-flair-vs-baseline-c1" in html and "brain-flair-vs-baseline-c2" in html
    assert "montage missing" in html  # candidate 2 has no picture: said, not hidden


def test_one_abnormality_in_two_series_is_said_so():
    """A lesion flagged by FLAIR and T2w against baseline and by FLAIR against the
    previous visit (the visit summary's ``same_abnormality``,
    pipelines.trial._group_across_series): each row names the others by the
    report's finding ids; the banner and the safety table count candidates and
    distinct abnormalities."""
    v = _visits()[2]
    t2 = {**_comparison("M2", candidates=[]), "contrast": "t2w",
          "baseline_name": f"sub-{SUBJ}/ses-baseline/anat/x_T2w.nii.gz",
          "followup_name": f"sub-{SUBJ}/ses-M2/anat/y_T2w.nii.gz"}
    fl = _comparison("M2", candidates=[])
    prev = _comparison("M2", ref="24h", candidates=[])

    def name(c: dict) -> str:
        return f"{c['followup_name']} vs {c['baseline_name']}"

    members = [(fl, 1, "brain-flair-M2-1"), (t2, 3, "brain-t2w-M2-3"), (prev, 1, None)]
    for comp, cid, fid in members:  # a vs-previous candidate has no tracked finding id
        comp["candidates"].append({**_cand(cid), "finding_id": fid,
                                   "abnormality_id": "brain-flair-M2-1", "same_abnormality": [
            {"comparison": name(c), "candidate_id": i, "finding_id": f}
            for c, i, f in members if c is not comp]})
    fl["candidates"].append(_cand(2))
    v["comparisons"] = [fl, t2, prev]
    v["n_flagged"], v["n_flagged_abnormalities"] = 4, 2
    html = render_visit_report(build_visit_context(v))
    assert "4 candidates flagged for review: 2 distinct abnormalities" in html
    assert ("abnormality brain-flair-M2-1, also seen as brain-t2w-M2-3, "
            "brain-flair-vs-24h-c1") in html
    assert "abnormality brain-flair-M2-1, also seen as brain-flair-M2-1" in html
    assert html.count("also seen as") == 3 and html.count("abnormality brain-") == 3
    # the abnormality's rows are listed together (by comparison), before the other one
    table = html[html.index('<table id="candidates">'):]
    rows = [table.index(f'href="#{f}"') for f in (
        "brain-flair-vs-24h-c1", "brain-flair-M2-1", "brain-t2w-M2-3",
        "brain-flair-vs-baseline-c2")]
    assert rows == sorted(rows)
    row = safety_rows([v])[0]  # the safety table counts both ways
    assert (row["flagged_candidates"], row["flagged_abnormalities"]) == (4, 2)
    v["n_flagged_abnormalities"] = 4  # nothing grouped: the banner as before
    assert "distinct" not in render_visit_report(build_visit_context(v))


def test_safety_table_in_time_order_without_days_from_dosing():
    """No enrolment row: no days from dosing; the table follows the pipeline's
    visit_index (StudyDate order), so M12 comes after M4 although "M12" < "M4"
    and a missing day is not read as day 0."""
    visits = _visits()
    for k, v in enumerate(visits):
        v["days_from_dosing"], v["visit_index"] = None, k
    visits[2]["visit"], visits[3]["visit"] = "M4", "M12"  # label order != time order
    assert [r["visit"] for r in safety_rows(visits[::-1])] == ["baseline", "24h", "M4", "M12"]


def test_safety_rule_without_and_with_decisions(tmp_path):
    visits = _visits()
    rows = safety_rows(visits)
    assert [r["new_abnormal_finding"] for r in rows] == [
        "baseline", "pending", "pending", "not assessable"]
    assert rows[3]["qc_verdict"] == "failed" and rows[3]["series_failed"] == "brain FLAIR"
    p = tmp_path / "decisions.json"
    p.write_text(json.dumps(_decisions(
        ("24h", "no new abnormal finding", "reader-1", "2026-07-01T10:00:00Z", []),
        ("M2", "no new abnormal finding", "reader-1", "2026-07-01T10:05:00Z", []),
        # a later re-read supersedes
        ("M2", "new abnormal finding", "reader-2", "2026-07-02T09:00:00Z",
         ["brain-flair-vs-baseline-c1"]),
        ("M4", "no new abnormal finding", "reader-2", "2026-07-02T09:30:00Z", []),
    )))
    in_force = latest_decisions(load_decisions(p))
    rows = safety_rows(visits, in_force)
    assert [r["new_abnormal_finding"] for r in rows] == ["baseline", "no", "yes", "no"]
    assert rows[2]["reviewer"] == "reader-2"
    text = safety_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [r["new_abnormal_finding"] for r in parsed] == ["baseline", "no", "yes", "no"]
    assert new_finding("incomplete", None) == "pending"
    assert new_finding("candidates flagged", None) == "pending"
    html = render_safety_table(rows)
    assert 'class="nf-yes">yes<' in html


def test_bad_decisions_file_names_file_and_problem(tmp_path):
    p = tmp_path / "decisions.json"
    p.write_text(json.dumps(_decisions(("M2", "maybe", "r", "2026-07-01T10:00:00Z", []))))
    with pytest.raises(ValueError, match=r"decisions.json: decision #0: decision"):
        load_decisions(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="decisions.json: invalid JSON"):
        load_decisions(p)
    assert load_decisions(tmp_path / "absent.json") == []


def test_escaping_no_external_urls_no_phi():
    v = _visits()[2]
    v["comparisons"][0]["candidates"][0]["type"] = "<script>alert(1)</script>"
    pages = [render_visit_report(build_visit_context(x)) for x in [*_visits()[:2], v,
                                                                  _visits()[3]]]
    pages.append(render_safety_table(safety_rows(_visits())))
    pages.append(render_index(safety_rows(_visits())))
    assert "<script>alert" not in pages[2] and "&lt;script&gt;" in pages[2]
    for html in pages:
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
        assert "http://" not in html and "https://" not in html
        assert "SYNTHPHI" not in html and "DOE" not in html
    assert "IM0004.dcm: truncated" in pages[3]  # the error is shown, its path is not


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(path)
    plt.close(fig)


def _check_links(root: Path) -> int:
    """Every <img src> and relative <a href> of every page under ``root`` exists."""
    n = 0
    for page in root.rglob("*.html"):
        html = page.read_text()
        for kind, ref in re.findall(r'<(img|a)\b[^>]*?(?:src|href)="([^"]+)"', html):
            if ref.startswith("#"):
                continue
            assert "://" not in ref and not ref.startswith("/"), (page, ref)
            assert (page.parent / ref.split("#")[0]).is_file(), (page, ref)
            n += kind == "img"
    return n


def test_write_reports_on_constructed_run(tmp_path):
    """pipelines/report.py on a constructed run folder (no pipeline run)."""
    from pipelines.report import write_reports

    out = tmp_path / "out"
    for v in _visits():
        d = out / "visits" / f"sub-{SUBJ}" / f"ses-{v['visit']}"
        d.mkdir(parents=True)
        (d / "visit_summary.json").write_text(json.dumps(v))
    for name in ("candidate-1.png", "candidate-2.png", "regcheck.png"):
        _png(out / "work" / "evidence" / "e1" / name)
    (out / "morphometry.json").write_text(json.dumps([
        {"subject": SUBJ, "visit": vis, "region": "brain", "series": "x_FLAIR.nii.gz",
         "contrast": "FLAIR", "manifest": "work/morphometry/m/manifest.json",
         "result": {"brain_mm3": 1.2e6 + i, "ventricles_mm3": 2.5e4, "csf": "dark"}}
        for i, vis in enumerate(("baseline", "24h", "M2"))]))
    res = write_reports(out)
    assert not res["decisions_error"]
    reports = out / "reports"
    assert len(res["reports"]) == 4
    rows = list(csv.DictReader((reports / "safety_table.csv").open()))
    assert [r["new_abnormal_finding"] for r in rows] == [
        "baseline", "pending", "pending", "not assessable"]
    m2 = (reports / f"sub-{SUBJ}/ses-M2/report.html").read_text()
    assert "assets/e1/candidate-1.png" in m2 and "assets/volumes.png" in m2
    moved = tmp_path / "moved"
    shutil.copytree(reports, moved)  # the folder works on its own
    assert _check_links(moved) >= 4
    # decisions arrive: the table follows; an invalid file is reported, not fatal
    (out / "review").mkdir()
    (out / "review" / "decisions.json").write_text(json.dumps(_decisions(
        ("M2", "new abnormal finding", "reader-1", "2026-07-01T10:00:00Z", []))))
    write_reports(out)
    rows = list(csv.DictReader((reports / "safety_table.csv").open()))
    assert rows[2]["new_abnormal_finding"] == "yes"
    assert "new abnormal finding</strong> by reader-1" in (
        reports / f"sub-{SUBJ}/ses-M2/report.html").read_text()
    (out / "review" / "decisions.json").write_text("[]")
    res = write_reports(out)
    assert "not a decisions file" in res["decisions_error"]
    assert "INVALID, ignored" in (reports / "safety_table.html").read_text()
    rows = list(csv.DictReader((reports / "safety_table.csv").open()))
    assert rows[2]["new_abnormal_finding"] == "pending"


# --------------------------------------------------------------------------- (b) slow

SECRET = b"report-test-secret-0123456789"
KEEP = ("02_FLAIR", "09_spine_T2w")
TE_FACTOR = 1.6


@pytest.fixture(scope="module")
def deviated_trial(tmp_path_factory) -> tuple[Path, float, float]:
    """One synthetic patient (FLAIR + spine T2w); the 24h FLAIR's EchoTime is
    rewritten in every DICOM header (x1.6). Returns (trial, TE before, TE after)."""
    import pydicom

    small = small_synthetic_trial(tmp_path_factory, KEEP)
    files = sorted((small / "dicom").glob("*/24h/02_FLAIR/*"))
    assert files
    te0 = float(pydicom.dcmread(files[0], stop_before_pixels=True).EchoTime)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.EchoTime = round(te0 * TE_FACTOR, 2)
        ds.save_as(f)
    return small, te0, round(te0 * TE_FACTOR, 2)


@pytest.fixture(scope="module")
def run_out(deviated_trial, tmp_path_factory) -> Path:
    from distributed import Client

    from pipelines.cluster import local_cluster
    from pipelines.trial import run_trial

    trial = deviated_trial[0]
    out = tmp_path_factory.mktemp("run") / "out"
    with local_cluster(n_workers=2) as c, Client(c) as client:
        summary = run_trial(trial / "dicom", out, client, secret=SECRET,
                            enrolment=trial / "enrolment.csv")
    assert not summary.failures, summary.failures
    return out


@pytest.mark.slow
def test_pipeline_reports_show_deviation_no_phi(run_out, deviated_trial):
    _, te0, te1 = deviated_trial
    reports = run_out / "reports"
    assert (reports / "index.html").is_file() and (reports / "safety_table.html").is_file()
    pages = sorted(reports.glob("sub-*/ses-*/report.html"))
    assert [p.parent.name for p in pages] == ["ses-24h", "ses-M2", "ses-baseline"]
    # the deviation: 24h vs baseline and M2 vs 24h (previous visit), both values shown
    for visit, ref_te, this_te in (("24h", te0, te1), ("M2", te1, te0)):
        html = (reports / pages[0].parent.parent.name / f"ses-{visit}" / "report.html").read_text()
        rows = [r for r in _table_rows(html, "deviations") if r[1] == "EchoTime"]
        assert rows, f"EchoTime deviation missing from the {visit} report"
        assert any(float(r[2]) == pytest.approx(ref_te, abs=0.5)
                   and float(r[3]) == pytest.approx(this_te, abs=0.5)
                   and r[5] == "major" for r in rows), rows
    # no PHI byte anywhere under reports/ (the generator marks every PHI tag)
    for f in reports.rglob("*"):
        if f.is_file():
            assert b"SYNTHPHI" not in f.read_bytes(), f
    assert _check_links(reports) >= 3 * 2
    rows = list(csv.DictReader((reports / "safety_table.csv").open()))
    assert [r["new_abnormal_finding"] for r in rows] == ["baseline", "pending", "pending"]
    # volumes across visits: measured for every visit, brain stable within 2 %
    morph = json.loads((run_out / "morphometry.json").read_text())
    brain = [e["result"]["brain_mm3"] for e in morph if e["region"] == "brain"]
    assert len(brain) == 3 and np.ptp(brain) / np.mean(brain) < 0.02, brain
    assert all("result" in e for e in morph), morph


# --------------------------------------------------------------------------- (c) browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.mark.slow
def test_report_in_headless_chromium(run_out, tmp_path):
    """Open the M2 report of a *moved* copy of reports/ in headless Chromium:
    every image loads, every request stays on file://, screenshot saved."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: Debian package chromium is not installed "
                    "(scripts/test.sh installs it with apt-get when run as root)")
    from playwright.sync_api import sync_playwright

    moved = tmp_path / "copied-reports"
    shutil.copytree(run_out / "reports", moved)
    page_path = next(moved.glob("sub-*/ses-M2/report.html"))
    shot = tmp_path / "report_m2.png"
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            for target in (moved / "index.html", moved / "safety_table.html", page_path):
                page.goto(target.as_uri())
                page.wait_for_load_state("load")
            page.eval_on_selector_all("details", "els => els.forEach(e => e.open = true)")
            page.wait_for_load_state("load")
            imgs = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert len(imgs) >= 4
    assert all(ok and w > 0 for _, ok, w in imgs), imgs
    bad = [u for u in requests if not (u.startswith("file://") or u.startswith("data:"))]
    assert not bad, bad
    assert any(u.endswith(".png") for u in requests)
    assert shot.stat().st_size > 50_000
    shutil.copy(shot, "/tmp/report_screenshot.png")
