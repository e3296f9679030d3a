"""Evaluation: chunked full-catalog top-k ranking (model and most-popular baseline) and the metrics on top of it."""

from cutrec.eval.metrics import METRIC_NAMES, format_table, item_user_counts, ranking_metrics
from cutrec.eval.ranking import most_popular_top_k, popularity_scores, top_k_items

__all__ = [
    "METRIC_NAMES",
    "format_table",
    "item_user_counts",
    "most_popular_top_k",
    "popularity_scores",
    "ranking_metrics",
    "top_k_items",
]
