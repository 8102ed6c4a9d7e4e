"""What a reader of the report sees: the forest plots above the headline and mitigation tables,
and the HTML page (multi-file and self-contained) parsed by a real HTML5 parser with every link
and image resolving."""

from __future__ import annotations

import base64
import csv
import io
import re
from pathlib import Path

import html5lib
import pytest

from nasaudit.audit.report import METRICS, write_report
from nasaudit.audit.report.comparison import nas_vs_manual, variant_vs_base
from nasaudit.audit.report.data import AuditData
from tests.test_audit_report import audit_dir  # noqa: F401  (the synthetic audit fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _links(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)='([^']*)'""", page)


def _strict_parse(page: str) -> None:
    """html5lib in strict mode raises on the first parse error."""
    html5lib.HTMLParser(strict=True).parse(page)


def test_forest_plot_heads_the_headline_and_matches_its_table(audit_dir: Path) -> None:  # noqa: F811
    md = write_report(audit_dir).read_text()
    headline = md.split("## Headline: NAS minus manual", 1)[1].split("\n## ", 1)[0]
    fig_at = headline.index("report_files/figures/headline_forest.png")
    table_at = headline.index("| metric | NAS mean |")
    assert fig_at < table_at, "the forest plot comes before the table"
    assert (audit_dir / "report_files/figures/headline_forest.png").read_bytes().startswith(PNG_MAGIC)
    comparisons = nas_vs_manual(AuditData.load(audit_dir), METRICS)
    with open(audit_dir / "report_files/tables/headline.csv", newline="") as handle:
        table = {r["metric"]: r for r in csv.DictReader(handle)}
    assert [c.metric.title for c in comparisons] == list(table)
    for c in comparisons:
        row = table[c.metric.title]
        assert float(row["NAS - manual"]) == pytest.approx(c.point, rel=1e-3, abs=1e-6)
        assert row["this run"] == c.verdict
    classes = {c.metric.key: c.verdict_class for c in comparisons}
    # The synthetic NAS models are clearly more vulnerable, but 3 models a side cannot carry a verdict.
    assert classes["pgd_asr_ml"] == "no verdict possible"
    assert classes["clean_acc"] == "no direction"
    assert {c.metric.family for c in comparisons} >= {"evasion", "backdoor", "stealing", "membership", "probes"}
    assert all(c.metric.unit for c in comparisons if c.metric.vulnerability)


def test_mitigation_forest_plot_compares_each_variant_with_its_base(audit_dir: Path) -> None:  # noqa: F811
    md = write_report(audit_dir).read_text()
    section = md.split("## Mitigation comparison (Table 4)", 1)[1].split("\n## ", 1)[0]
    assert "mitigation_forest_" in section
    data = AuditData.load(audit_dir)
    rows = variant_vs_base(data, "darts_i", "darts_v2", METRICS)
    pgd = next(c for c in rows if c.metric.key == "pgd_asr_ml")
    mean = lambda label: sum(data.values(pgd.metric)[label].values()) / 2  # noqa: E731  (two seeds)
    assert pgd.point == pytest.approx(mean("darts_i") - mean("darts_v2"))
    assert pgd.direction == "lower"  # the study: mitigation lowers evasion ASR ...
    assert next(c for c in rows if c.metric.key == "poison_cad").direction == "higher"  # ... but raises CAD
    # Two seeds per side are the units: 2 vs 2 cannot reject anything (smallest p 1/3).
    assert pgd.n_a == pgd.n_b == 2 and pgd.p == pytest.approx(1 / 3) and pgd.low is None and pgd.high is None
    assert pgd.verdict_class == "no verdict possible"


def test_multi_file_html_is_valid_and_every_link_resolves(audit_dir: Path) -> None:  # noqa: F811
    write_report(audit_dir)
    page = (audit_dir / "report.html").read_text()
    _strict_parse(page)
    links = _links(page)
    assert any(link.endswith(".png") for link in links) and any(link.endswith(".csv") for link in links)
    anchors = set(re.findall(r"id='([^']+)'", page))
    for link in links:
        if link.startswith("#"):
            assert link[1:] in anchors
        else:
            assert (audit_dir / link).is_file(), link


def test_single_file_html_embeds_everything(audit_dir: Path) -> None:  # noqa: F811
    write_report(audit_dir, single_file=True)
    page = (audit_dir / "report.html").read_text()
    _strict_parse(page)
    links = _links(page)
    external = [link for link in links if not link.startswith(("#", "data:"))]
    assert external == [], f"links leaving the page: {external[:3]}"
    images = [link for link in links if link.startswith("data:image/png;base64,")]
    csvs = [link for link in links if link.startswith("data:text/csv;base64,")]
    assert len(images) == len(list((audit_dir / "report_files/figures").glob("*.png")))
    for link in images:
        assert base64.b64decode(link.split(",", 1)[1]).startswith(PNG_MAGIC)
    headline = next(base64.b64decode(link.split(",", 1)[1]).decode() for link in csvs
                    if b"NAS - manual" in base64.b64decode(link.split(",", 1)[1]))
    on_disk = (audit_dir / "report_files/tables/headline.csv").read_text()
    assert list(csv.reader(io.StringIO(headline))) == list(csv.reader(io.StringIO(on_disk)))
    # Moved away from its files, the page still has everything.
    moved = audit_dir.parent / "sent.html"
    moved.write_text(page)
    assert "report_files/" not in "".join(_links(moved.read_text()))


def test_report_single_file_from_the_cli(audit_dir: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    from nasaudit.cli import main

    assert main(["report", str(audit_dir), "--single-file"]) == 0
    assert "self-contained report.html" in capsys.readouterr().out
    page = (audit_dir / "report.html").read_text()
    _strict_parse(page)
    assert [link for link in _links(page) if not link.startswith(("#", "data:"))] == []
