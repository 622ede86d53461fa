"""Default bounds on what the data pipeline reads (``data.max_image_pixels``, ``data.max_member_bytes``).

Here, in the lowest layer, so the run config and the data pipeline share one value without the
config importing the pipeline.
"""

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # larger images are skipped as decompression_bomb
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024**2  # one tar member (an image, a JSON) larger than this is left out
