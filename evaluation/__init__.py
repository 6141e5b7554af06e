"""What a head's scores are, at score time (torch; used by train_head, evaluate, search):
`scoring` (settings, score matrices, Binary margins), `order_sensitivity` (each query against its own
video with its frames changed), `postprocess` (the DSL and QB-Norm formulas), `retrieval_metrics`
(tie-aware metrics) and `results` (the result file: written here, read by reporting/; it and
retrieval_metrics import no torch)."""
