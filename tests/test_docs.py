"""The README is the landing page and docs/ the reference: neither may drift from the code."""

import re
from pathlib import Path

import pytest

from bench import cli, reference

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SCREEN = 60  # lines: what a first look at the README shows
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    lines, code = [], False
    for line in path.read_text().splitlines():
        code ^= line.startswith("```")
        if not code and line.startswith("#"):
            lines.append(_slug(line.lstrip("#")))
    return set(lines)


@pytest.mark.parametrize("rel", list(reference.PAGES))
def test_generated_pages_are_what_bench_reference_writes(rel):
    assert (ROOT / rel).read_text() == reference.PAGES[rel](), (
        f"{rel} is stale: run `python -m bench.reference` and commit the result")


def test_every_docs_page_is_linked_from_the_readme():
    readme = README.read_text()
    for page in _pages():
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("path", [README, *_pages()], ids=lambda p: p.name)
def test_every_relative_link_resolves(path):
    for target in LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path.name}: link to {target} finds no file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{path.name}: no heading #{anchor} in {dest.name}"


def test_the_readme_shows_setup_the_loop_and_the_studies_at_first_sight():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200
    screen = "\n".join(lines[:SCREEN])
    assert screen.index("make setup") < screen.index("make study NAME=mlp_vs_cnn")
    assert "make test" in screen
    loop = screen.split("## The loop", 1)[1]
    order = [loop.index(f"make {step} NAME=") for step in ("study", "finalize", "report",
                                                            "promote")]
    assert order == sorted(order)
    studies = screen.split("## Studies", 1)[1]
    for name in cli.study_names():
        assert f"| `{name}` |" in studies, f"study {name} is not in the README's first screen"
    assert "RESULTS_DIR" in screen and "SEED" in screen  # another seed needs another folder
    assert "Replicated answers: [docs/results.md](docs/results.md)" in " ".join(lines)


# Every bad input the README's table listed when the README moved to docs/: none may be lost.
BAD_INPUT = [
    "error: unknown study 'nope'; valid:",
    "error: unknown study '../studies/mlp_vs_cnn'; valid:",
    "error: unknown setting 'TRIAL'; valid: NAME, TRIALS,",
    "error: TRIALS='ten' is not valid: expected a positive integer",
    "error: unknown architecture 'vit'; valid: cnn, cnn-bn,",
    "error: unknown optimizer 'lion'; valid: adam, adamw, rmsprop, sgd",
    "error: lr range (0.0, 0.01) must be > 0",
    "error: batch sizes (64, 0) must all be > 0",
    "error: mlp.width range (32, 16) has low > high",
    "error: missing MNIST file .../train-images-idx3-ubyte.gz",
    "error: corrupt MNIST file .../train-labels-idx1-ubyte.gz: md5",
    "error: STORAGE='mysql://bench:***@db.lan/studies' is not valid: expected a "
    "postgresql://user@host[:port]/database URL",
    "error: cannot open STORAGE=postgresql://bench:***@127.0.0.1:1/studies: connection failed:",
    "error: no study at results/x/optuna.journal; start it first with",
    "error: no study x.r0.mlp in postgresql://",
    "error: .../optuna.journal is not an Optuna journal; move it away or choose another "
    "RESULTS_DIR",
    "error: .../optuna.journal holds other studies (other.mlp), not x.r0.mlp, x.r0.cnn;",
    "error: ... holds this study run with other settings (SEED 0 → 5);",
    "error: ... holds trials of another search space, split size or precision (the study file "
    "changed);",
    "error: no completed trial for cnn (replicate 1) in results/x/trials.parquet: the study "
    "cannot compare its families; the test split was not read",
    "error: <the system's reason>: <the path>",
    "error: results/leaderboard.md has no leaderboard.json beside it to keep its rows from, and "
    "15 entries have no run in results/leaderboard.parquet (...); reproduce them or move "
    "results/leaderboard.md away",
    "error: N of the M trials run so far failed (...)",
]


@pytest.mark.parametrize("message", BAD_INPUT)
def test_every_bad_input_line_is_in_the_docs(message):
    docs = " ".join(" ".join(p.read_text() for p in _pages()).split())  # lines rewrapped
    assert message in docs


def test_every_test_the_bad_input_table_names_exists():
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", (DOCS / "bad-input.md").read_text())
    assert len(named) >= 10
    for file, test in named:
        assert f"def {test}(" in (ROOT / "tests" / file).read_text(), f"{file}::{test}"


def _tables(text: str) -> list[list[str]]:
    """The markdown tables of `text`, each as its lines."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_the_readmes_leaderboard_is_the_top_of_results_leaderboard_md():
    section = README.read_text().split("## Leaderboard", 1)[1].split("\n## ", 1)[0]
    groups = _tables((ROOT / "results" / "leaderboard.md").read_text())
    shown = _tables(section)
    assert shown
    for table in shown:  # the header and the first rows of one group, verbatim
        assert any(table == group[:len(table)] for group in groups), table[2]


def test_make_list_shows_each_models_knobs(capsys):
    assert cli.main(["list"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # however the terminal wrapped it
    tunable = [k for k in reference.registered_knobs() if k.ranges]
    assert {k.name for k in tunable} >= {"mlp", "cnn", "sgd", "adam", "onecycle", "step"}
    for k in tunable:
        knobs = ", ".join(f"{knob} {default!r}" for knob, default in k.ranges.items())
        assert f"{k.name} ({k.field}): {knobs}" in out
    assert "mlp (arch_ranges): depth (1, 3), width (64, 1024)" in out
