"""`python -m indistill_cli` (also what torchrun runs)."""

from indistill_cli.cli import main

if __name__ == "__main__":
    main()
