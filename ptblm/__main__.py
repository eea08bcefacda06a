"""`python -m ptblm ...`, which is also what `torchrun -m ptblm ...` runs."""

from ptblm.cli import main

main()
