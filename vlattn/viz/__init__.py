"""Shared writers of pictures.

:mod:`.overlay` attention overlays, :mod:`.grid` image grids, :mod:`.png` PNG files, :mod:`.gif` animations.
"""
