from lungnod_ext.cli import run

run()
