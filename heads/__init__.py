"""The retrieval heads and how they train on cached features: the heads (`architectures`), learned
frame selection, a cache split as tensors, the contrastive batch and loss, and checkpoints. It reads
the cache through `corpus`; what a head's scores are worth is `evaluation`'s business."""
