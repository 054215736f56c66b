from ingot.cli.main import run

run()
