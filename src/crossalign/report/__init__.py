"""Reports: one self-contained HTML page with training curves, a distance heatmap, galleries,
rank histograms and, for several runs, a comparison; every plot is also saved as a PNG.

``crossalign.report.report(runs, data, out)`` (also :func:`crossalign.api.report`) builds it;
``crossalign report RUN ... --data DIR --out report.html`` is the command.
"""

from crossalign.report.build import ReportResult, report

__all__ = ["report", "ReportResult"]
