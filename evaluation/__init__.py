"""What a head's scores are worth: evaluation settings and score matrices (`scoring`), tie-aware
metrics, bootstrap statistics and the report's figures. It reads heads and cache splits; it trains
nothing and writes no cache."""
