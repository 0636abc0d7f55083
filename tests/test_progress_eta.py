"""The progress line's ETA (issue 18): the epochs each unfinished trial has left at its own measured time per epoch
(the mean of the measured for a trial not started), divided by the trials running at once."""
from types import SimpleNamespace

from harness.scheduling.runner import eta_text


def trial(status, epochs, done=0, seconds=0.0, stop=None):
    cell = {"recipe": {"epochs": epochs}, "stop_epoch": stop}
    result = {"epoch": done, "time_total_s": seconds} if done else {}
    return SimpleNamespace(status=status, config={"cell": cell}, last_result=result)


def test_nothing_measured_yet_says_nothing():
    assert eta_text([trial("RUNNING", 10), trial("PENDING", 10)]) == ""


def test_eta_from_each_trials_own_pace_shared_by_the_running_ones():
    trials = [
        trial("RUNNING", 10, done=4, seconds=40.0),  # 6 epochs left at 10 s: 60 s
        trial("RUNNING", 10, done=2, seconds=60.0),  # 8 left at 30 s: 240 s
        trial("PENDING", 10),  # 10 at the mean, 20 s: 200 s
        trial("TERMINATED", 10, done=10, seconds=100.0),  # finished: nothing left (and measured at 10 s)
        trial("PENDING", 20, stop=5),  # stops after 5 epochs (an early-stopped teacher): 5 × 50/3 s
    ]
    mean = (10 + 30 + 10) / 3
    left = 60 + 240 + 10 * mean + 5 * mean
    assert eta_text(trials) == f", ETA {left / 2 / 60:.0f} min"


def test_long_runs_are_told_in_hours():
    assert eta_text([trial("RUNNING", 200, done=1, seconds=3600.0)]) == ", ETA 199.0 h"
