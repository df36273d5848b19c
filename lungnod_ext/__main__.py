from lungnod_ext.apps.cli import run

run()
