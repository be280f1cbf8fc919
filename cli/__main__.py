"""`python -m cli ...` runs the same command line as `clob ...`."""

from cli.main import clob

clob(prog_name="clob")
