"""`python -m src.data`: the command line of src/data/cli.py."""

from src.data.cli import main
from src.errors import run_main

if __name__ == "__main__":
    raise SystemExit(run_main(main))
