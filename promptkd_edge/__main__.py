"""`python -m promptkd_edge ...` (also what `torchrun -m promptkd_edge distill ...` runs)."""

from promptkd_edge.cli import main

main()
