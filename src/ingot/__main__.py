# The fast path first: it runs the full CLI (ingot.cli.main) for whatever it does not answer itself.
import os

try:
    from ingot.cli.fast import main
except KeyboardInterrupt:  # Ctrl-C this early: quietly, as ingot.cli.fast.interrupted does later on
    os._exit(130)

main()
