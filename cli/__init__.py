"""`clob`: the operator's command line (click). Each command group lives in its own module
and is registered in `cli.main`."""
