"""The sweep's trend tables: means per value of every swept axis, failed cells left out."""

import pandas as pd

from experiments.reports.sweeps import trends


def test_trends_average_each_axis_over_the_finished_cells():
    frame = pd.DataFrame({
        "cell": list("abcde"),
        "method": ["cat", "cat", "cat_random", "cat_random", "cat"],
        "method.config.keep_ratio": ["0.2", "0.4", "0.2", "0.4", "0.4"],
        "status": ["done", "done", "done", "done", "failed"],
        "error": ["", "", "", "", "boom"],
        "psnr": [30.0, 34.0, 20.0, 24.0, float("nan")],
        "macs_reduction": [0.6, 0.5, 0.6, 0.5, float("nan")],
    })
    text = trends(frame)
    assert "4 finished cells (of 5)" in text
    assert "### by method" in text and "### by method.config.keep_ratio" in text
    by_method = text.split("### by method\n")[1]
    assert "| cat        |       2 |     32 |" in by_method and "| cat_random |       2 |     22 |" in by_method
    assert "### psnr by method and method.config.keep_ratio" in text


def test_no_trends_without_a_swept_axis():
    frame = pd.DataFrame({"cell": ["a"], "status": ["done"], "error": [""], "psnr": [30.0]})
    assert trends(frame) == ""
