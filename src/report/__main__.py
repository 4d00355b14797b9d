from src.errors import run_main
from src.report.cli import main

raise SystemExit(run_main(main))
