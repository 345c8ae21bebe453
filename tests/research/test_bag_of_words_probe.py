"""research.bag_of_words_probe: the word n-gram counts the reference text side is built from."""

from __future__ import annotations

import numpy as np
import pytest

from research.bag_of_words_probe import ngram_counts, tfidf


def test_ngram_counts_by_hand():
    texts = ["A red bag, a red top-left coat.", "The bag."]
    # columns by the number of captions holding the n-gram, ties in order of appearance:
    # bag, a, red, top-left (one word), coat, the
    assert ngram_counts(texts, 1).tolist() == [[1, 2, 2, 1, 1, 0], [1, 0, 0, 0, 0, 1]]
    pairs = ngram_counts(texts, 2)
    # with the first caption's pairs ("a red" twice, "red bag", "bag a", "red top-left", "top-left coat")
    # before the second caption's words: bag, a, red, top-left, coat, <5 pairs>, the, "the bag"
    assert pairs.tolist() == [[1, 2, 2, 1, 1, 2, 1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]]


def test_tfidf_rows_are_unit_and_rarer_words_weigh_more():
    # columns: red, bag (two captions each), blue, coat, green, hat (one each)
    y = tfidf(ngram_counts(["red bag", "blue bag", "red coat", "green hat"], 1))
    assert np.allclose(np.linalg.norm(y, axis=1), 1)
    assert y[0, 0] == y[0, 1]  # "red bag": two words of the same frequency
    assert y[1, 2] / y[1, 1] == pytest.approx(np.log(4 / 2) / np.log(4 / 3))  # "blue bag": idf log(N / (1 + df))
    assert np.count_nonzero(y[3]) == 2 and y[3, 4] == y[3, 5]
