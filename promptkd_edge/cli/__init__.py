"""`pkd`: the command line. Each command parses, calls one function and prints; a PkdError becomes one line and
exit code 2 (cli/common.py). Commands by module: train.py (teacher, distill, eval, classes), demo.py, export.py,
predict.py, doctor.py, bench.py, models.py; importing a module registers its commands, in the order `pkd --help`
lists them."""

# isort: off
from promptkd_edge.cli.common import app
from promptkd_edge.cli import train, demo, export, predict, doctor, bench, models  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    """The `pkd` console script."""
    app()
