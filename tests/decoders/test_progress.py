"""Progress reports: a bar on a terminal, a few whole lines in a log, nothing when quiet."""
import io

from decoders.progress import LineProgress, progress


def test_a_log_gets_a_line_per_interval_not_per_step():
    out = io.StringIO()
    with LineProgress(total=10_000, desc="fit", unit="step", stream=out, every=3600) as bar:
        for _ in range(10_000):
            bar.update(1)
            bar.set_postfix_str("train 1.23 b/d")
    lines = out.getvalue().splitlines()
    assert lines == ["fit: 0/10000 step (0%), 0 s, started", "fit: 10000/10000 step (100%), 0 s, train 1.23 b/d, done"]


def test_lines_come_at_most_every_interval():
    out = io.StringIO()
    for _ in LineProgress(range(5), desc="jobs", unit="job", stream=out, every=0.0):
        pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 7 and lines[3].startswith("jobs: 3/5 job (60%)") and "s left" in lines[3]
    assert lines[-1].endswith("done")


def test_progress_prints_lines_when_stderr_is_not_a_terminal(capsys):
    assert list(progress(range(3), desc="x")) == [0, 1, 2]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "x: 0/3 it (0%), 0 s, started" and err[-1].startswith("x: 3/3 it (100%)") and len(err) == 2
    assert list(progress(range(3), desc="x", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
