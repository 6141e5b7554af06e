"""The retrieval heads and how they train on cached features: `architectures` (the heads, what each
says it is, HEADS), `frame_selection` (learned frame selection), `loaded_split` (a cache split as the
heads read it), `training` (the optimisation flags, batches, the contrastive loss) and `checkpoints`
(run folders, checkpoints, and which caches a trained head may score). It reads the cache through
`corpus`; what a head's scores are worth is `evaluation`'s business."""
