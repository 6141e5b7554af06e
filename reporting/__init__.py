"""What report.py computes and draws from result files, with numpy, scipy and matplotlib only (no
torch: the result file is the seam, evaluation/results.py): `stats` (bootstrap, paired tests, Holm),
`seeds` (a method's cells, Binary rows and comparisons over its seeds), `rtime_analyses` (direction
split, paraphrase drop, order sensitivity), `tables` (markdown and LaTeX), `plots` (figures) and
`examples` (the page of queries where heads part ways)."""
