"""What every stage shares and nothing else owns: how a stage meets its user (`cli`: one error type,
one entry point, exit codes, flag types), files written atomically under a lock and known by their
sha256 (`file_io`), the first difference between two records (`records`), and one process or many
under torchrun, with progress lines (`runtime`). It knows nothing of videos, features, heads or metrics."""
