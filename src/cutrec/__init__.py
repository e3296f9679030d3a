"""cutrec: train transformer sequential recommenders on large catalogs, fast and in little GPU memory."""

__version__ = "0.2.0"
