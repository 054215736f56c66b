# The fast path first: it runs the full CLI (ingot.cli.main) for whatever it does not answer itself.
from ingot.cli.fast import main

main()
