"""The audit report: markdown + HTML with PNG figures and CSV tables, built from the database only.

`write_report(out_dir)` reads ``out_dir/results.sqlite`` (nothing else: no checkpoint, no
config file) and writes ``report.md``, ``report.html`` and ``report_files/`` (figures/*.png,
tables/*.csv). Every section the study has appears; a section without data says why in one
line instead of being empty.

Statistics:
  * per model, a metric is the mean over its seeds;
  * the headline difference is mean(NAS group) - mean(manual group) over model means, tested
    by an exact permutation test over the model labels (Holm over the headline's metrics) with
    the 95% interval that inverts the same test;
  * correlations are Spearman's rho across models, with exact permutation p-values and
    Benjamini-Hochberg over the table.

Layout: `metrics` (what number a record gives), `data` (reading the store), `stats`
(permutation tests, verdicts, correlations), `document` (sections, tables, figures and their
markdown/HTML/CSV renderings), `figures` (matplotlib), `builder` (state shared by sections),
`sections/` (one module per family of results) and `write` (putting it together).
"""

from nasaudit.audit.report.data import AuditData
from nasaudit.audit.report.metrics import Metric
from nasaudit.audit.report.sections import METRIC_BY_KEY, METRICS
from nasaudit.audit.report.stats import permutation_test, spearman, verdict
from nasaudit.audit.report.write import build_sections, write_report

__all__ = ["AuditData", "METRICS", "METRIC_BY_KEY", "Metric", "build_sections", "permutation_test", "spearman",
           "verdict", "write_report"]
