"""The repository stands alone: every citation and link points at something it holds, every
notebook carries the same Colab setup cell, and the package ships what its callers look for."""

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COURSE = sorted((ROOT / "notebooks").glob("*.ipynb"))  # the numbered course
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))  # worked solutions of its exercises
NOTEBOOKS = COURSE + SOLUTIONS
SECTION = r"§[0-9]+(?:\.[0-9]+)*(?:-[0-9]+(?:\.[0-9]+)*)?"
CITATION = re.compile(rf"docs/(paper|design)\.md ({SECTION}(?:, {SECTION})*)")


def tracked(*suffixes) -> list[Path]:
    """The repository's own text files (git ls-files), by suffix."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.split() if f.endswith(suffixes) and (ROOT / f).is_file()]


def texts(*suffixes) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(errors="ignore") for p in tracked(*suffixes)}


def headings(doc: Path) -> set[str]:
    """Section numbers of a markdown file: '## 2. Title' -> '2', '### 2.5 Title' -> '2.5'."""
    return {m.group(1) for m in re.finditer(r"^#{2,4} ([0-9]+(?:\.[0-9]+)*)\.? ", doc.read_text(), re.M)}


def section_numbers(text: str):
    """('paper', '2.5') for each section a citation names; a range 8.2-8.6 names both ends."""
    for m in CITATION.finditer(text):
        for item in m.group(2).split(", "):
            for number in item.lstrip("§").split("-"):
                yield m.group(1), number


def test_the_citation_pattern_finds_sections_and_ranges():
    text = "see docs/paper.md §2.5 and docs/design.md §6.1, and docs/paper.md §4, §8.2-8.6."
    assert list(section_numbers(text)) == [("paper", "2.5"), ("design", "6.1"), ("paper", "4"),
                                           ("paper", "8.2"), ("paper", "8.6")]


def test_every_citation_points_at_a_section_that_exists():
    sections = {name: headings(ROOT / "docs" / f"{name}.md") for name in ("paper", "design")}
    assert {"2.5", "8.3", "10"} <= sections["paper"] and {"2", "6.1"} <= sections["design"]
    bad, n = [], 0
    for path, text in texts(".py", ".md", ".ipynb", ".toml", ".sh").items():
        for name, number in section_numbers(text):
            n += 1
            if number not in sections[name]:
                bad.append(f"{path}: docs/{name}.md §{number}")
    assert n > 50  # the code, notebooks and README do cite the docs
    assert not bad, "citations of sections that do not exist:\n" + "\n".join(bad)


# names of working notes that live outside the repository, and talk of our issue tracker; written
# so that this file does not match itself
NOT_OURS = ("paper" + "_notes", r"\bDESIGN" + r"\.md", "SOURCES" + r"\.md", r"\b[Ii]ssues? [0-9]+\b", "the issue" + "'s",
            r"\(" + r"issue\b")


def test_no_file_cites_notes_outside_the_repository_or_speaks_of_issues():
    bad = []
    for path, text in texts(".py", ".md", ".ipynb", ".toml", ".yml", ".sh", ".txt").items():
        for pattern in NOT_OURS:
            for m in re.finditer(pattern, text):
                bad.append(f"{path}: {text[max(0, m.start() - 30):m.end() + 10]!r}")
        if not path.startswith("tests/") and re.search(r"\.\./shared|shared/eval_assets", text):
            bad.append(f"{path}: points at ../shared, which users never have")
    assert not bad, "\n".join(bad)


def test_relative_links_in_markdown_and_notebooks_resolve():
    bad = []
    files = {**texts(".md"), **texts(".ipynb")}
    for path, text in files.items():
        if path.endswith(".ipynb"):  # links live in markdown cells
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "markdown")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:|#", target):
                continue
            if not (ROOT / path).parent.joinpath(target.split("#")[0]).resolve().exists():
                bad.append(f"{path}: ({target})")
    assert not bad, "links to files that do not exist:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------------------------
# notebooks: one Colab setup cell, the same everywhere


def _nb(path):
    return json.loads(path.read_text())


def _code(path) -> str:
    """A notebook's code cells, joined."""
    return "\n".join("".join(c["source"]) for c in _nb(path)["cells"] if c["cell_type"] == "code")


def _setup_cell(nb) -> str:
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def test_every_notebook_carries_the_same_setup_cell_and_asks_colab_for_a_gpu():
    assert len(COURSE) == 10
    cells = {p.name: _setup_cell(_nb(p)) for p in NOTEBOOKS}
    first = cells[NOTEBOOKS[0].name]
    assert all(cell == first for cell in cells.values()), \
        f"setup cells differ: {[n for n, c in cells.items() if c != first]}"
    assert len(re.findall(r"^REPO_URL = \"https://github\.com/[^\"]+\"$", first, re.M)) == 1  # one line to edit
    assert "google.colab" in first and "raise RuntimeError" in first and "raise ImportError" in first
    assert "NBVAL_SKIP" not in first  # it runs (as an install check) under nbval too
    for p in NOTEBOOKS:
        meta = _nb(p)["metadata"]
        assert meta.get("accelerator") == "GPU" and meta.get("colab", {}).get("gpuType"), p.name


def test_colab_badges_open_the_notebook_they_sit_in():
    for p in NOTEBOOKS:
        first = "".join(_nb(p)["cells"][0]["source"])
        assert re.search(rf"colab\.research\.google\.com/github/[^)]+/blob/main/{re.escape(str(p.relative_to(ROOT)))}\)", first), p.name


def test_the_setup_cell_fails_loudly_when_the_package_is_missing(tmp_path):
    """Outside Colab, without compress3d_lite importable, the cell raises a message saying what to do."""
    import sys

    code = _setup_cell(_nb(NOTEBOOKS[0]))
    script = tmp_path / "cell.py"
    script.write_text("import sys\nsys.modules['compress3d_lite'] = None\n"  # hide the installed package
                      "import importlib.util\nimportlib.util.find_spec = lambda name, *a: None\n" + code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0
    assert "ImportError: compress3d_lite is not installed" in r.stderr and "pip install -e" in r.stderr


def _exercises(nb) -> list[str]:
    """The numbered items of a notebook's '## Exercises' section."""
    md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    m = re.search(r"^## Exercises\s*$(.*?)(?=^## |\Z)", md, re.M | re.S)
    return re.split(r"^\d+\. ", m.group(1), flags=re.M)[1:] if m else []


def test_every_exercise_says_what_to_expect_and_has_a_worked_solution():
    """Each exercise states what the learner should see, and notebooks/solutions/ holds a notebook
    for each course notebook with a '## Exercise k' section per exercise (run by the tests too)."""
    for p in COURSE:
        items = _exercises(_nb(p))
        assert items, f"{p.name} has no exercises"
        vague = [k + 1 for k, item in enumerate(items) if not re.search(r"You\s+should\s+see", item)]
        assert not vague, f"{p.name}: exercises {vague} do not say what the learner should see"
        sol = ROOT / "notebooks" / "solutions" / p.name.replace(".ipynb", "_solutions.ipynb")
        assert sol.exists(), f"no worked solutions for {p.name} ({sol.relative_to(ROOT)})"
        md = "\n".join("".join(c["source"]) for c in _nb(sol)["cells"] if c["cell_type"] == "markdown")
        done = {int(n) for n in re.findall(r"^## Exercise (\d+)", md, re.M)}
        assert done == set(range(1, len(items) + 1)), f"{sol.name} solves {sorted(done)} of 1..{len(items)}"
        assert f"]({p.name})" in md or f"](../{p.name})" in md, f"{sol.name} does not link back to {p.name}"
    assert len(SOLUTIONS) == len(COURSE)


def test_the_exercise_check_sees_a_vague_exercise():
    nb = {"cells": [{"cell_type": "markdown", "source": ["## Exercises\n\n1. Try it. You should see a cube.\n"
                                                          "2. Try that.\n\n## Next\n"]}]}
    items = _exercises(nb)
    assert len(items) == 2 and "You should see" in items[0] and "You should see" not in items[1]
    assert re.search(r"You\s+should\s+see", "Try it. You\n   should see a cube.")  # wrapped lines count


def test_notebook_math_has_single_backslashes():
    """``\\\\hat`` in a markdown cell renders as a line break and the word "hat", not a symbol."""
    for p in NOTEBOOKS:
        bad = [i for i, c in enumerate(_nb(p)["cells"]) if c["cell_type"] == "markdown"
               and re.search(r"\\\\[a-zA-Z]", "".join(c["source"]))]
        assert not bad, f"{p.name}: markdown cells {bad} have doubled backslashes in their math"


def test_notebooks_are_committed_without_outputs():
    for p in NOTEBOOKS:
        dirty = [i for i, c in enumerate(_nb(p)["cells"]) if c["cell_type"] == "code"
                 and (c.get("outputs") or c.get("execution_count"))]
        assert not dirty, f"{p.name}: cells {dirty} carry outputs"


def test_notebooks_find_shipped_files_through_the_package_not_relative_paths():
    for p in NOTEBOOKS:
        code = _code(p)
        # a copied notebook (Colab) has no clone around it: shipped files and kept results come through
        # compress3d_lite.samples (sample_path, shipped_checkpoint, stored_result), never from the folders
        assert not re.search(r"[\"']\.\./|data_samples/|sys\.path\.insert|benchmarks|Path\.cwd\(\)|\.parents\[", code), p.name


def test_file_names_in_prose_and_docstrings_exist():
    """`models/prior.py`, ``stages/vae.py``, (evaluation/paper.py): every Python file the docs,
    notebooks and docstrings name is one the repository holds (a move renames it everywhere)."""
    ours = ("compress3d_lite/", "tests/", "benchmarks/", "docs/", ".ci/", "models/", "stages/", "data/",
            "evaluation/", "training/", "cli/", "inference/", "scaling/")
    files = [str(p.relative_to(ROOT)) for p in tracked(".py")] + [
        str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if ".git" not in p.parts]
    names = {Path(f).name for f in files}
    bad = []
    for path, text in texts(".md", ".ipynb", ".py").items():
        for m in re.finditer(r"``?([\w./-]+\.py)``?|\(([\w/.-]+/[\w.-]+\.py)\)", text):
            ref = m.group(1) or m.group(2)
            if "/" not in ref:
                ok = ref in names
            elif ref.startswith(ours):
                ok = any(f.endswith(ref) for f in files)
            else:
                continue  # another project's file
            if not ok:
                bad.append(f"{path}: {ref}")
    assert not bad, "names of files that do not exist:\n" + "\n".join(sorted(set(bad)))


def test_no_markdown_line_starts_with_a_plus_or_star_inside_formula_text():
    """A wrapped line of a formula that starts with '+ ' (or '* ') becomes a list item in every
    markdown renderer, breaking the formula in two (07's dual-guidance formula did)."""
    bad = []
    for p in NOTEBOOKS:
        for i, c in enumerate(_nb(p)["cells"]):
            if c["cell_type"] == "markdown":
                bad += [f"{p.name} cell {i}: {line.strip()[:60]}" for line in "".join(c["source"]).splitlines()
                        if re.match(r"^\s+[+*] ", line)]
    assert not bad, bad
    assert re.match(r"^\s+[+*] ", "  + s_s\\,[f(i,s)]$")  # what the check catches


def _imported_modules(source: str) -> set[str]:
    """Top-level names of the absolute imports in Python source (IPython magics and shell lines dropped)."""
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ours, and IPython: the kernel a notebook runs in (ipykernel, in the dev extra, requires it)
KERNEL = {"compress3d_lite", "IPython"}


def test_what_the_tests_and_notebooks_import_is_a_requirement_of_the_quick_start():
    """The README's quick start installs the package and its `dev` extra, then runs tests and
    notebooks: every third-party module they import comes from a distribution named there (a
    module installed here by hand, as nbclient once was, fails a new user's first pytest)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_canonical(re.match(r"[A-Za-z0-9_.-]+", r).group(0))
              for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    providers = importlib.metadata.packages_distributions()
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "tests").glob("*.py"))}
    sources |= {p.name: _code(p) for p in COURSE}
    bad = []
    for where, source in sources.items():
        for module in sorted(_imported_modules(source) - set(sys.stdlib_module_names) - KERNEL):
            dists = {_canonical(d) for d in providers.get(module, [])}
            if not dists & wanted:
                bad.append(f"{where}: {module} ({', '.join(sorted(dists)) or 'not installed here'})")
    assert not bad, "imports no requirement of the quick start provides:\n" + "\n".join(bad)
    assert _imported_modules("%matplotlib inline\nfrom nbclient import X\nimport a.b\nfrom . import c") == {"nbclient", "a"}
