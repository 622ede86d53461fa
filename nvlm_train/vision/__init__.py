"""Images -> tiles: the card's dynamic tiling (``tiling``), Pillow-exact resampling on any device
(``resample``, ``device_tiles``), normalisation, and the tile route that decides where tiles are cut
(``route``). Used by the data pipeline, the model (normalisation) and inference; imports neither."""
