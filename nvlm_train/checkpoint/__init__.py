"""Checkpoints: the folder layout, distributed save/load, lazy tensor reads and the saved run config.

``layout`` and ``reader`` and ``saved_run`` do not import megatron (tools that only read a
checkpoint stay light); ``dist`` saves and loads model, optimizer and loader state with
megatron-core's ``dist_checkpointing``; ``streaming_save`` writes a model one tensor at a time.
"""
