"""The console's progress line (jobs.progress), as a log (not a terminal) shows it."""

import io

from jobs.progress import Progress, format_duration


def test_a_log_gets_a_line_each_time_the_count_passes_a_multiple_of_every():
    # Updates of 10 against every=25: the count is never a multiple of 25 at 30 or 80,
    # but a line is due when it passes 25 and 75, and at the end.
    out = io.StringIO()
    bar = Progress("quality", 100, unit="step", every=25, stream=out)
    for _ in range(10):
        bar.update(10, values={"D": 0.25})
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["30/100", "50/100", "80/100", "100/100"]
    assert all("step/s | D 0.25 | elapsed " in line and " ETA " in line for line in lines)
    assert lines[-1].startswith("[quality] 100/100 100%") and lines[-1].endswith("ETA 0:00")


def test_a_resumed_run_counts_on_from_its_step_and_durations_read_as_clock_times():
    out = io.StringIO()
    bar = Progress("train", 10, every=1, stream=out, initial=6)
    bar.update()
    assert out.getvalue().startswith("[train] 7/10  70% | ")
    assert format_duration(59.6) == "1:00" and format_duration(3725) == "1:02:05"


def test_notes_get_sections_of_their_own_and_a_line_among_others_never_redraws():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    redrawn, among = Terminal(), Terminal()
    Progress("train", 4, stream=redrawn).update(1)
    assert redrawn.getvalue().startswith("\r\x1b[2K[train] 1/4") and not redrawn.getvalue().endswith("\n")
    bar = Progress("tune", 4, unit="step", stream=among, in_place=False)
    bar.done = 2
    bar.write_line(bar.line({}, ["trials: 1 running", "best err 3.5 (t0)"]), final=False)
    assert among.getvalue().startswith("[tune] 2/4  50% | ") and among.getvalue().endswith("\n")
    assert " | trials: 1 running | best err 3.5 (t0) | elapsed " in among.getvalue()
