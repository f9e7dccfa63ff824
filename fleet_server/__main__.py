"""`python -m fleet_server` = `fleet-server`."""

from fleet_server.cli import main

main()
