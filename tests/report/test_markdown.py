from bdprune.report.markdown import markdown_report
from helpers_report import make_result


def test_markdown_summarises_each_checkpoint():
    text = markdown_report([make_result("a|b.pt", spike=50.0), make_result("c.pt")], top=3)
    lines = text.splitlines()
    assert lines[0] == "## bdprune scan"
    rows = [line for line in lines if line.startswith("| `")]
    assert "**suspicious**" in rows[0] and "a\\|b.pt" in rows[0]  # pipes escaped
    assert "| clean |" in rows[1]
    assert text.count("<details>") == 2
    # the spiked channel ranks first in its table
    first_rank = next(line for line in lines if line.startswith("| 1 |"))
    assert "`layer2.bn` | 5 |" in first_rank


def test_top_zero_lists_no_channels():
    assert "<details>" not in markdown_report([make_result("c.pt")], top=0)
