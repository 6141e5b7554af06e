"""From a video corpus to the feature cache and back: annotation files and their formats
(`annotations`, FORMATS), which frames to keep (`sampling`), decoding exactly those
(`video_frames`), and the cache's files and contract (`feature_cache`). It never runs CLIP
(extract.py does) and never trains or scores."""
