"""`python -m fleet_server` = `fleet-server`."""

from fleet_server.entry import main

main()
