from overlays.cli.main import run

run()
