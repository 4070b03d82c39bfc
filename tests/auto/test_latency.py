"""The latency model: fitted to measurements, it predicts from depth and parameters."""

from __future__ import annotations

import pytest

from llmopt.auto.latency import LatencyModel


def test_the_fit_recovers_the_weight_of_depth():
    truth = LatencyModel(0.7)
    points = [(layers, params, 0.7 * layers + 0.3 * params)
              for layers, params in ((0.5, 0.8), (1.0, 0.6), (0.75, 0.7), (0.4, 0.45))]  # fmt: skip
    assert LatencyModel.fit(points).weight == pytest.approx(truth.weight)


def test_points_that_cannot_tell_depth_from_parameters_keep_the_prior():
    assert LatencyModel.fit([(0.5, 0.5, 0.4), (0.8, 0.8, 0.9)]) == LatencyModel()


def test_the_weight_stays_a_fraction():
    assert LatencyModel.fit([(0.5, 1.0, 0.1)]).weight == 1.0
    assert LatencyModel.fit([(0.5, 1.0, 2.0)]).weight == 0.0
