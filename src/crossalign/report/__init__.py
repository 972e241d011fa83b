"""The report room: one self-contained HTML page with training curves, a distance heatmap,
galleries, rank histograms and, for several runs, a comparison; every plot is also saved as a
PNG. :func:`crossalign.report.build.report` builds it; :func:`crossalign.report` calls it.
"""
