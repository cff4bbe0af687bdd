"""The report's summary helpers (mmgpt/report/summary.py)."""


def test_pareto_front():
    from mmgpt.report.summary import pareto_front

    points = [("a", 1.0, 0.5), ("b", 2.0, 0.7), ("c", 3.0, 0.6), ("d", 4.0, 0.9), ("e", 1.0, 0.4)]
    assert pareto_front(points) == ["a", "b", "d"]  # c costs more than b and scores less; e is a at a lower score
    assert pareto_front(points, higher_is_better=False) == ["e"]
