"""Sessions: `nox -s tests` and `notebooks` (with `lint`, what CI runs), `slow` (long tests), `bench`, `study`.

Uses virtualenv + pip on purpose: pip picks up the local CPU torch wheel, uv would download a CUDA
build of several GB (see ENVIRONMENT notes in the README).
"""

import os

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["lint", "tests", "notebooks"]
nox.options.reuse_existing_virtualenvs = True

ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests on CPU (what CI runs)."""
    install(session)
    session.run("pytest", *(session.posargs or ["-q"]), env=ENV)


@nox.session
def slow(session: nox.Session) -> None:
    """Long tests kept out of the default run."""
    install(session)
    session.run("pytest", "-q", "-m", "slow", *session.posargs, env=ENV)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "fluid_lightning", "tests", "benchmarks", "noxfile.py")


@nox.session
def notebooks(session: nox.Session) -> None:
    """Executes every notebook under notebooks/ (CI: they still run). The notebooks are committed with
    their outputs, so a code host shows the pictures: `nox -s notebooks -- --overwrite` writes them back."""
    install(session)
    # A cell's limit is generous: on a shared 2-core machine the notebooks' short fits run ~10x slower.
    session.run("pytest", "--nbmake", "--nbmake-timeout=1200", "-p", "no:cacheprovider", "-o", "addopts=",
                *session.posargs, "notebooks", env=ENV)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; results are appended by hand to benchmarks/RESULTS.md."""
    install(session)
    for script in sorted(os.listdir("benchmarks")):
        if script.startswith("bench_") and script.endswith(".py"):
            session.run("python", f"benchmarks/{script}", env=ENV)


@nox.session
def study(session: nox.Session) -> None:
    """The Fluid study (docs/study.md): every variant and size at the quickstart's budget, then STUDY.md.
    Hours on a CPU; `nox -s study -- --quick --out runs/study_quick` is the seconds-long form CI tests."""
    install(session)
    session.run("python", "benchmarks/study.py", *(session.posargs or ["--out", "runs/study"]), env=ENV)
