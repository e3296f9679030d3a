"""cutrec: train transformer sequential recommenders on large catalogs, fast and in little GPU memory.

The Python API (cutrec.api) is imported on first use, so `import cutrec` stays light:
`cutrec.Interactions`, `cutrec.SASRec`, `cutrec.BERT4Rec`, `cutrec.load`.
"""

__version__ = "0.2.0"
_API = ("BERT4Rec", "Interactions", "Recommender", "SASRec", "load")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        from cutrec import api

        return getattr(api, name)
    raise AttributeError(f"module 'cutrec' has no attribute {name!r}")
