"""What every stage shares and nothing else owns: files written atomically under a lock and known by
their sha256 (`file_io`), and one process or many under torchrun, with progress lines (`runtime`).
It knows nothing of videos, features, heads or metrics."""
